"""A small simulated cluster on the emulator: nodes in zones, worker pods, their Leases.

Why simulate the workers here instead of running ``KubeAssigner`` for each: the operator only
sees pods, nodes and Lease renewals, so a heartbeat task that bumps ``renewTime`` is the whole
worker as far as it is concerned (``test_assigner`` covers the real worker side). Every change
goes through the emulator's API code path, so kopf sees real watch events.

``OperatorThread`` runs the real operator (``mailish.operator.running.run``) in its own thread
and event loop, as kopf requires; the emulator stays in pytest's loop, and stopping joins the
thread without blocking that loop (kopf may still talk to the emulator while it exits).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import kopf

from mailish.kube import resources
from mailish.kube.connecting import KubeConnection
from mailish.operator import handlers, running
from tests.harness.kube_emulator import KubeEmulator

NS = "default"
PODS, NODES, LEASES = "v1/pods", "v1/nodes", "coordination.k8s.io/v1/leases"
BUCKETS = f"{resources.API_VERSION}/{resources.BUCKETS}"
POOLS = f"{resources.API_VERSION}/{resources.POOLS}"


def fast_settings() -> kopf.OperatorSettings:
    settings = handlers.operator_settings()
    settings.queueing.exit_timeout = 1.0
    settings.persistence.consistency_timeout = 0.5  # kopf waiting to see its own pool patches
    settings.watching.reconnect_backoff = 0.05
    return settings


class OperatorThread:
    def __init__(self, url: str, *, debounce: float = 0.05) -> None:
        self.context = handlers.OperatorContext(
            connection=KubeConnection(server=url), debounce=debounce, retry_delay=0.2
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kopf-operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(
                running.run(
                    namespace=NS,
                    context=self.context,
                    settings=fast_settings(),
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def __aenter__(self) -> OperatorThread:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 10)
        if self._error is not None:
            raise self._error
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 15)
        assert not self._thread.is_alive(), "the operator did not stop"
        if self._error is not None:
            raise self._error


class Cluster:
    """Nodes, worker pods and their heartbeats, driven the way the kubelet would."""

    def __init__(self, emulator: KubeEmulator, *, renew_every: float = 0.2) -> None:
        self.emulator = emulator
        self.renew_every = renew_every
        self.alive: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Cluster:
        self.emulator.create("v1/namespaces", {"metadata": {"name": NS}})
        self._task = asyncio.create_task(self._heartbeats(), name="cluster-heartbeats")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def pool(self, buckets: int, **spec: Any) -> None:
        body = {"metadata": {"name": "mailish"}, "spec": {"buckets": buckets, **spec}}
        self.emulator.create(POOLS, body, NS)

    def node(self, name: str, zone: str) -> None:
        labels = {resources.ZONE_LABEL: zone}
        self.emulator.create(NODES, {"metadata": {"name": name, "labels": labels}})
        self.set_node(name, ready=True)

    def set_node(self, name: str, *, ready: bool, taints: tuple[str, ...] = ()) -> None:
        condition = {"type": "Ready", "status": "True" if ready else "Unknown"}
        self.emulator.patch(NODES, None, name, {"status": {"conditions": [condition]}}, status=True)
        spec = {"taints": [{"key": key, "effect": "NoExecute"} for key in taints] or None}
        self.emulator.patch(NODES, None, name, {"spec": spec})

    def worker(self, name: str, node: str, *, track: str | None = None, lease: bool = True) -> str:
        labels = {resources.COMPONENT_LABEL: resources.WORKER_COMPONENT}
        if track:
            labels[resources.TRACK_LABEL] = track
        pod = self.emulator.create(
            PODS, {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": node}}, NS
        )
        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        self.emulator.patch(PODS, NS, name, {"status": ready}, status=True)
        if lease:
            self.alive.add(name)
            self._renew(name)
        return str(pod["metadata"]["uid"])

    def uid(self, pod: str) -> str:
        return str(self.emulator.get(PODS, NS, pod)["metadata"]["uid"])

    def silence(self, pod: str) -> None:
        """The worker stops renewing its Lease (hung, partitioned, SIGSTOPped)."""
        self.alive.discard(pod)

    def _renew(self, pod: str) -> None:
        spec = resources.LeaseSpec(pod_name=pod, pod_uid=self.uid(pod), duration_seconds=1)
        body = spec.body(namespace=NS, now=datetime.datetime.now(datetime.UTC))
        name = body["metadata"]["name"]
        try:
            self.emulator.patch(LEASES, NS, name, body)
        except Exception:
            self.emulator.create(LEASES, body, NS)

    async def _heartbeats(self) -> None:
        while True:
            for pod in sorted(self.alive):
                self._renew(pod)
            await asyncio.sleep(self.renew_every)

    # --- reading the outcome -----------------------------------------------------------------

    def owners(self) -> dict[int, str | None]:
        return {
            b["spec"]["bucket"]: (b.get("status") or {}).get("owner")
            for b in self.emulator.list(BUCKETS, NS, copied=False)
        }

    def epochs(self) -> dict[int, int]:
        return {
            b["spec"]["bucket"]: (b.get("status") or {}).get("epoch", 0)
            for b in self.emulator.list(BUCKETS, NS, copied=False)
        }

    def loads(self) -> Counter[str | None]:
        return Counter(self.owners().values())

    def moved_events(self) -> list[dict[str, Any]]:
        return [e for e in self.emulator.list("v1/events", NS) if e.get("reason") == "BucketMoved"]


async def eventually(
    check: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02
) -> float:
    """Poll until ``check()`` holds; returns the seconds it took, fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not reached in {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def balanced(loads: Counter[str | None], workers: set[str], total: int) -> bool:
    """Every bucket owned by one of ``workers``, loads within one of each other."""
    counts = [loads.get(w, 0) for w in workers]
    return sum(counts) == total and max(counts) - min(counts) <= 1
