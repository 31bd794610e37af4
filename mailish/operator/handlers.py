"""kopf handlers, registered on an explicit registry (never kopf's global one).

They stay thin: indexes reduce each watched object to small facts (``facts``), event handlers
mark the namespace dirty through the ``Tracker``, and one daemon per ``MailishPool`` runs the
``Reconciler`` over the pure planner. Everything shared lives in ``memo.mailish``
(``OperatorContext``), built by ``running`` and shallow-copied by kopf into every handler.

kopf's own bookkeeping stays under the ``mailish.io`` prefix, and the operator runs without
kopf's peering objects: correctness rests on resourceVersion-conditional status writes, not
on a single replica, so peering would add a CRD dependency and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from mailish.kube import resources
from mailish.kube.client import KubeClient
from mailish.kube.connecting import KubeConnection
from mailish.operator import facts
from mailish.operator.facts import PoolSettings
from mailish.operator.planning import ClusterView
from mailish.operator.reconciling import Reconciler
from mailish.operator.tracking import Tracker

G, V = resources.GROUP, resources.VERSION
WORKERS = {resources.COMPONENT_LABEL: resources.WORKER_COMPONENT}
LEASES = {resources.COMPONENT_LABEL: resources.LEASE_COMPONENT}

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OperatorContext:
    """One operator process's shared state; the same object in every handler's ``memo``."""

    connection: KubeConnection
    tracker: Tracker = field(default_factory=Tracker)
    debounce: float = 0.1
    retry_delay: float = 1.0


def context(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo.mailish
    return ctx


def operator_settings() -> kopf.OperatorSettings:
    """kopf's settings; pods and Leases are filtered server-side, so a big cluster's other
    pods never reach us (the handlers' ``labels=`` filters repeat it as a safety net)."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = f"{G}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=G)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=G)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.label_selectors["v1", "pods"] = resources.WORKER_SELECTOR
    settings.watching.label_selectors["coordination.k8s.io", "leases"] = resources.LEASE_SELECTOR
    settings.peering.standalone = True
    # The daemon exits on its stop flag but still closes its HTTP client: wait for that
    # instead of re-checking (and holding the pool's finalizer) only 5 s later.
    settings.background.instant_exit_timeout = 1.0
    return settings


def connection_info(connection: KubeConnection) -> kopf.ConnectionInfo:
    header = connection.authorization() or ""
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(
        server=connection.server,
        ca_path=connection.ca_file,
        insecure=not connection.verify,
        scheme=scheme or None,
        token=token or None,
        certificate_path=connection.cert_file,
        private_key_path=connection.key_file,
        default_namespace=connection.namespace,
    )


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
        return connection_info(context(memo).connection)

    @kopf.index("v1", "pods", labels=WORKERS, id="worker_pods", registry=registry)
    def worker_pods(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {namespace: facts.pod_facts(body)}

    @kopf.index("v1", "nodes", id="nodes", registry=registry)
    def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, facts.NodeFacts]:
        return {name: facts.node_facts(body)}

    @kopf.index(
        "coordination.k8s.io", "v1", "leases", labels=LEASES, id="worker_leases", registry=registry
    )
    def worker_leases(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        lease = facts.lease_facts(body)
        return {} if lease is None else {(namespace, lease.pod_name): lease}

    @kopf.index(G, V, resources.BUCKETS, id="buckets", registry=registry)
    def buckets(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        record = facts.bucket_record(body)
        return {} if record is None else {(namespace, record.pool): record}

    @kopf.index(G, V, resources.POOLS, id="pools", registry=registry)
    def pools(namespace: str | None, name: str, **_: Any) -> dict[Any, Any]:
        return {namespace: name}

    @kopf.on.event("v1", "pods", labels=WORKERS, id="pod_event", registry=registry)
    def pod_event(
        namespace: str | None, name: str, body: kopf.Body, type: str, memo: Any, **_: Any
    ) -> None:
        pod = None if type == "DELETED" else facts.pod_facts(body)
        context(memo).tracker.noticed("pod", namespace or "", name, pod)

    @kopf.on.event("v1", "nodes", id="node_event", registry=registry)
    def node_event(name: str, body: kopf.Body, type: str, memo: Any, **_: Any) -> None:
        node = None if type == "DELETED" else facts.node_facts(body)
        context(memo).tracker.noticed("node", "", name, node)

    @kopf.on.event(
        "coordination.k8s.io", "v1", "leases", labels=LEASES, id="lease_event", registry=registry
    )
    def lease_event(namespace: str | None, body: kopf.Body, type: str, memo: Any, **_: Any) -> None:
        lease = facts.lease_facts(body)
        context(memo).tracker.lease_event(namespace or "", lease, deleted=type == "DELETED")

    @kopf.on.event(G, V, resources.BUCKETS, id="bucket_event", registry=registry)
    def bucket_event(
        namespace: str | None, body: kopf.Body, type: str, memo: Any, **_: Any
    ) -> None:
        record = facts.bucket_record(body)
        context(memo).tracker.bucket_event(namespace or "", record, deleted=type == "DELETED")

    @kopf.daemon(
        G,
        V,
        resources.POOLS,
        id="reconcile",
        cancellation_timeout=5.0,
        backoff=5.0,
        registry=registry,
    )
    async def reconcile(
        namespace: str | None,
        name: str,
        spec: kopf.Spec,
        status: kopf.Status,
        memo: Any,
        stopped: kopf.DaemonStopped,
        **indexes: Any,
    ) -> None:
        """Plan this pool until kopf stops us; the indexes are live, read each cycle.

        Exiting at once on ``stopped`` matters: kopf holds the pool's finalizer (and its own
        shutdown) until the daemon is gone.
        """
        ctx = context(memo)
        ns = namespace or ""
        worker_pods: kopf.Index[str, facts.PodFacts] = indexes["worker_pods"]
        nodes: kopf.Index[str, facts.NodeFacts] = indexes["nodes"]
        worker_leases: kopf.Index[Any, facts.LeaseFacts] = indexes["worker_leases"]
        buckets: kopf.Index[Any, facts.BucketRecord] = indexes["buckets"]
        pools: kopf.Index[str, str] = indexes["pools"]

        def view() -> ClusterView:
            pods = list(worker_pods.get(ns, []))
            return ClusterView(
                pods=pods,
                nodes={node: store_one(store) for node, store in nodes.items()},
                leases={
                    pod.name: store_one(worker_leases[(ns, pod.name)])
                    for pod in pods
                    if (ns, pod.name) in worker_leases
                },
                buckets=list(buckets.get((ns, name), [])),
            )

        client = KubeClient(ctx.connection)  # lives exactly as long as this daemon
        reconciler = Reconciler(
            tracker=ctx.tracker,
            client=client,
            namespace=ns,
            pool=name,
            post_event=post_event,
            debounce=ctx.debounce,
            retry_delay=ctx.retry_delay,
        )
        try:
            async with asyncio.TaskGroup() as group:
                work = group.create_task(
                    reconciler.run(
                        view=view,
                        settings=lambda: PoolSettings.from_spec(spec),
                        status=status,
                        active=lambda: min(pools.get(ns, [name])) == name,
                    )
                )
                await stopped.wait()
                work.cancel()
        finally:
            await client.aclose()

    return registry


def store_one(store: Any) -> Any:
    """The single value an index key holds (keys are unique per object here)."""
    return next(iter(store))


def post_event(ref: dict[str, Any], reason: str, message: str) -> None:
    """Queue a Kubernetes Event on kopf's poster (it needs only the object's reference)."""
    kopf.event(cast(kopf.Body, ref), type="Normal", reason=reason, message=message)
