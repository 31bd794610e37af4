"""Kubernetes bodies → the small frozen facts the operator keeps in its kopf indexes.

Why extract at index time: an index holds one small value per object instead of whole
bodies, the values compare by equality (so a heartbeat that changes nothing marks nothing
dirty), and the planner's inputs can be built and tested from plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailish.domain.assignment import CANARY, STABLE, BucketState
from mailish.domain.eligibility import WorkerFacts
from mailish.domain.ids import BucketNo, Epoch
from mailish.kube import resources

Body = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PodFacts:
    name: str
    uid: str
    node: str
    track: str
    ready: bool
    terminating: bool
    drain: bool


@dataclass(frozen=True, slots=True)
class NodeFacts:
    ready: bool
    taints: frozenset[str]
    zone: str


@dataclass(frozen=True, slots=True)
class LeaseFacts:
    pod_name: str
    pod_uid: str | None
    renew_time: str | None


@dataclass(frozen=True, slots=True)
class BucketRecord:
    """One MailishBucket as last seen; ``resource_version`` is the write precondition."""

    name: str
    pool: str
    uid: str
    resource_version: str
    bucket: int
    paused: bool
    owner: str | None
    owner_uid: str | None
    epoch: int

    def state(self, *, epoch_floor: int = 0) -> BucketState:
        """The planner's view; a bucket never assigned starts from ``epoch_floor``."""
        epoch = self.epoch or (0 if self.owner else epoch_floor)
        return BucketState(
            BucketNo(self.bucket), self.owner, self.owner_uid, Epoch(epoch), self.paused
        )


RESYNC_SECONDS = 10.0
LEASE_GRACE_SECONDS = 15.0
MAX_MOVES_PER_CYCLE = 8


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """A MailishPool's spec; the defaults are the CRD's (crds/mailishpools.yaml)."""

    buckets: int
    resync: float = RESYNC_SECONDS
    lease_grace: float = LEASE_GRACE_SECONDS
    max_moves: int = MAX_MOVES_PER_CYCLE
    canary_share: float = 0.0

    @classmethod
    def from_spec(cls, spec: Body) -> PoolSettings:
        """Read a spec the CRD schema has validated; only absent fields need defaults."""
        return cls(
            buckets=int(spec.get("buckets", 0)),
            resync=float(spec.get("resyncSeconds", RESYNC_SECONDS)),
            lease_grace=float(spec.get("leaseGraceSeconds", LEASE_GRACE_SECONDS)),
            max_moves=int(spec.get("maxMovesPerCycle", MAX_MOVES_PER_CYCLE)),
            canary_share=float(spec.get("canaryShare", 0.0)),
        )


def _condition_true(body: Body, kind: str) -> bool:
    for condition in body.get("status", {}).get("conditions") or ():
        if condition.get("type") == kind:
            return bool(condition.get("status") == "True")
    return False


def pod_facts(body: Body) -> PodFacts:
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    drain = str((meta.get("annotations") or {}).get(resources.DRAIN_ANNOTATION, "")).lower()
    return PodFacts(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        node=str(body.get("spec", {}).get("nodeName") or ""),
        track=CANARY if labels.get(resources.TRACK_LABEL) == CANARY else STABLE,
        ready=_condition_true(body, "Ready"),
        terminating=bool(meta.get("deletionTimestamp")),
        drain=drain in ("true", "1", "yes"),
    )


def node_facts(body: Body) -> NodeFacts:
    taints = body.get("spec", {}).get("taints") or ()
    return NodeFacts(
        ready=_condition_true(body, "Ready"),
        taints=frozenset(str(t.get("key", "")) for t in taints),
        zone=str((body.get("metadata", {}).get("labels") or {}).get(resources.ZONE_LABEL, "")),
    )


def lease_facts(body: Body) -> LeaseFacts | None:
    pod = resources.lease_pod_name(str(body.get("metadata", {}).get("name", "")))
    if pod is None:
        return None
    renew = body.get("spec", {}).get("renewTime")
    return LeaseFacts(pod, resources.lease_pod_uid(body), str(renew) if renew else None)


def bucket_record(body: Body) -> BucketRecord | None:
    meta = body.get("metadata", {})
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    number = spec.get("bucket")
    if not isinstance(number, int):
        return None
    return BucketRecord(
        name=str(meta.get("name", "")),
        pool=str((meta.get("labels") or {}).get(resources.POOL_LABEL, "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        bucket=number,
        paused=bool(spec.get("paused", False)),
        owner=status.get("owner") or None,
        owner_uid=status.get("ownerUid") or None,
        epoch=int(status.get("epoch") or 0),
    )


def worker_facts(pod: PodFacts, node: NodeFacts | None, lease_seen_at: float | None) -> WorkerFacts:
    """A missing node counts as not ready: an unscheduled or orphaned pod cannot work."""
    return WorkerFacts(
        name=pod.name,
        uid=pod.uid,
        zone=node.zone if node else "",
        track=pod.track,
        pod_ready=pod.ready,
        terminating=pod.terminating,
        drain=pod.drain,
        node_ready=node.ready if node else False,
        node_taints=node.taints if node else frozenset(),
        lease_seen_renew_at=lease_seen_at,
    )
