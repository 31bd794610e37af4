"""One reconcile cycle's decision, from indexed facts to a plan: pure, so it is unit-tested.

The reconciler gathers a ``ClusterView`` from kopf's indexes and the lease sightings, this
module decides, and the reconciler writes. Besides the planner's output a cycle reports what
the driver needs next: which bucket objects are missing (to create), how many buckets stay
unowned (a metric), and ``next_check``, the moment the freshest-looking Lease would go stale.
A Lease that stops renewing sends no event, so the reconciler must wake up by itself then.

Silence is not death. Staleness is judged "as of" ``min(now, lease_heard + grace / 2)``, where
``lease_heard`` is when the operator last received *any* Lease event in the namespace. While
other workers renew, that is now, and one silent worker goes stale on time. When every Lease
goes quiet at once, the likelier cause is our own watch (kopf stops its streams before its
daemons when the operator shuts down; a stream can also break), or an outage with nobody left
to take over: either way, moving every bucket would only churn epochs. So nobody goes stale
until Lease events flow again. This holds while workers renew at least every ``grace / 2``
(they renew every third of their lease duration, which must not exceed the grace).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailish.domain.assignment import Plan, PlanSettings, Worker, plan_assignments
from mailish.domain.eligibility import IneligibleReason, select_eligible
from mailish.domain.ids import BucketNo
from mailish.operator.facts import (
    BucketRecord,
    LeaseFacts,
    NodeFacts,
    PodFacts,
    PoolSettings,
    worker_facts,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterView:
    pods: Sequence[PodFacts]
    nodes: Mapping[str, NodeFacts]
    leases: Mapping[str, LeaseFacts]  # by pod name
    buckets: Sequence[BucketRecord]


@dataclass(frozen=True, slots=True)
class Cycle:
    plan: Plan
    workers: tuple[Worker, ...]
    refused: dict[str, IneligibleReason]
    records: dict[BucketNo, BucketRecord]
    missing: tuple[int, ...]
    unowned: int
    next_check: float | None
    highest_epoch: int


def valid_lease(pod: PodFacts, lease: LeaseFacts | None) -> bool:
    """A Lease counts only for the pod uid it names: not for a same-named successor."""
    return lease is not None and lease.pod_uid == pod.uid and lease.renew_time is not None


def plan_cycle(
    view: ClusterView,
    settings: PoolSettings,
    *,
    lease_seen: Mapping[str, float | None],
    now: float,
    lease_heard: float | None = None,
    epoch_floor: int = 0,
) -> Cycle:
    records = _in_range(view.buckets, settings.buckets)
    floor = max([epoch_floor, *(r.epoch for r in records.values())])
    facts = [
        worker_facts(
            pod,
            view.nodes.get(pod.node),
            lease_seen.get(pod.name) if valid_lease(pod, view.leases.get(pod.name)) else None,
        )
        for pod in view.pods
    ]
    judged = now if lease_heard is None else min(now, lease_heard + settings.lease_grace / 2)
    workers, refused = select_eligible(facts, now=judged, lease_grace=settings.lease_grace)
    plan = plan_assignments(
        workers,
        [record.state(epoch_floor=floor) for record in records.values()],
        PlanSettings(max_rebalance_moves=settings.max_moves, canary_share=settings.canary_share),
    )
    eligible = {w.name for w in workers}
    deadlines = [
        deadline
        for f in facts
        if f.name in eligible
        and (seen := f.lease_seen_renew_at) is not None
        and (deadline := seen + settings.lease_grace) > now  # passed ones wait for events
    ]
    unowned = sum(
        1 for b, a in plan.assignments.items() if a.owner is None and not records[b].paused
    )
    return Cycle(
        plan=plan,
        workers=workers,
        refused=refused,
        records=records,
        missing=tuple(b for b in range(settings.buckets) if b not in records),
        unowned=unowned,
        next_check=min(deadlines, default=None),
        highest_epoch=max([floor, *(a.epoch for a in plan.assignments.values())]),
    )


def _in_range(buckets: Sequence[BucketRecord], count: int) -> dict[BucketNo, BucketRecord]:
    """Bucket objects the pool covers, one per number (the first name wins a duplicate).

    Objects beyond the pool's count are left alone, never deleted: shrinking the count does
    not move accounts (their bucket is fixed at creation), so those buckets are an operator
    mistake to surface, not to erase.
    """
    chosen: dict[BucketNo, BucketRecord] = {}
    for record in sorted(buckets, key=lambda r: r.name):
        if not 0 <= record.bucket < count:
            log.warning(
                "bucket object %s: bucket %d is outside 0..%d",
                record.name,
                record.bucket,
                count - 1,
            )
            continue
        if record.bucket in chosen:
            log.warning(
                "bucket objects %s and %s both claim bucket %d; ignoring the second",
                chosen[BucketNo(record.bucket)].name,
                record.name,
                record.bucket,
            )
            continue
        chosen[BucketNo(record.bucket)] = record
    return chosen
