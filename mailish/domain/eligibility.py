"""May this worker pod own buckets? Decided from facts the operator gathered, purely.

Why separate from the planner: eligibility reads Kubernetes-shaped facts (pod and node status,
taints, the worker's Lease), the planner only sees the eligible ``Worker`` values. Each refusal
has a short reason code so the operator can log and export why a worker was left out.

Checks run in this order and the first failure is the reason::

    terminating → not_ready → draining → node_not_ready → node_tainted → lease_missing → lease_stale

Lease freshness never compares the Lease's ``renewTime`` with our clock: the worker's clock may
be skewed, so a renewTime far in the future would look fresh forever. ``LeaseObserver`` records
instead *when the operator last saw renewTime change*, on the operator's monotonic clock, and a
lease is stale when that was more than ``lease_grace`` seconds ago. A lease seen for the first
time (e.g. after an operator restart) counts as just renewed, so a restart never evicts anyone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from mailish.domain.assignment import Worker

IneligibleReason = Literal[
    "terminating",
    "not_ready",
    "draining",
    "node_not_ready",
    "node_tainted",
    "lease_missing",
    "lease_stale",
]

# Taints the node lifecycle controller (or an admin, for out-of-service) puts on a dead node.
FATAL_TAINTS: Final = frozenset(
    {
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/out-of-service",
    }
)


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    name: str
    uid: str
    zone: str
    track: str
    pod_ready: bool
    terminating: bool
    drain: bool
    node_ready: bool
    node_taints: frozenset[str]
    lease_seen_renew_at: float | None  # operator monotonic time renewTime last changed

    def worker(self) -> Worker:
        return Worker(self.name, self.uid, self.zone, self.track)


def eligible(
    facts: WorkerFacts, *, now: float, lease_grace: float
) -> tuple[bool, IneligibleReason | None]:
    """``(True, None)``, or ``(False, reason)`` for the first failing check (module docstring)."""
    reason: IneligibleReason | None = None
    if facts.terminating:
        reason = "terminating"
    elif not facts.pod_ready:
        reason = "not_ready"
    elif facts.drain:
        reason = "draining"
    elif not facts.node_ready:
        reason = "node_not_ready"
    elif facts.node_taints & FATAL_TAINTS:
        reason = "node_tainted"
    elif facts.lease_seen_renew_at is None:
        reason = "lease_missing"
    elif now - facts.lease_seen_renew_at > lease_grace:
        reason = "lease_stale"
    return reason is None, reason


def select_eligible(
    facts: Iterable[WorkerFacts], *, now: float, lease_grace: float
) -> tuple[tuple[Worker, ...], dict[str, IneligibleReason]]:
    """The planner's input, plus why each left-out worker was left out (sorted by name)."""
    workers: list[Worker] = []
    refused: dict[str, IneligibleReason] = {}
    for item in sorted(facts, key=lambda f: f.name):
        ok, reason = eligible(item, now=now, lease_grace=lease_grace)
        if ok:
            workers.append(item.worker())
        elif reason is not None:
            refused[item.name] = reason
    return tuple(workers), refused


class LeaseObserver:
    """Remembers, per worker, the last renewTime seen and the monotonic time it last changed."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def observe(self, name: str, renew_time: str | None, now: float) -> bool:
        """Record one look at a worker's Lease; ``None`` means no Lease (or no renewTime).

        True when this look found a renewTime not seen before (the worker showed life).
        """
        if renew_time is None:
            self._seen.pop(name, None)
            return False
        previous = self._seen.get(name)
        if previous is None or previous[0] != renew_time:
            self._seen[name] = (renew_time, now)
            return True
        return False

    def seen_at(self, name: str) -> float | None:
        previous = self._seen.get(name)
        return None if previous is None else previous[1]

    def forget(self, name: str) -> None:
        """Drop a worker that no longer exists, so the table does not grow forever."""
        self._seen.pop(name, None)
