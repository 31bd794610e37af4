"""The operator's Prometheus metrics, on the shared ``mailish.observability.metrics.REGISTRY``.

They live here rather than in ``observability/metrics.py`` only until the lead moves them
there; names and labels are final. ``pool`` is ``<namespace>/<name>``: one or a few values,
so the labels stay low-cardinality. Gauges describe the latest plan; counters accumulate.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mailish.domain.assignment import MOVE_REASONS
from mailish.domain.eligibility import IneligibleReason
from mailish.observability.metrics import REGISTRY

INELIGIBLE_REASONS: tuple[IneligibleReason, ...] = (
    "terminating",
    "not_ready",
    "draining",
    "node_not_ready",
    "node_tainted",
    "lease_missing",
    "lease_stale",
)

bucket_moves = Counter(
    "operator_bucket_moves",
    "Buckets the operator moved to another owner (new epoch), by plan reason.",
    ["pool", "reason"],
    registry=REGISTRY,
)
eligible_workers = Gauge(
    "operator_eligible_workers",
    "Worker pods that may own buckets in the latest plan.",
    ["pool"],
    registry=REGISTRY,
)
ineligible_workers = Gauge(
    "operator_ineligible_workers",
    "Worker pods left out of the latest plan, by the first failing check.",
    ["pool", "reason"],
    registry=REGISTRY,
)
unowned_buckets = Gauge(
    "operator_unowned_buckets",
    "Non-paused buckets without an owner after the latest plan (nonzero: no eligible worker).",
    ["pool"],
    registry=REGISTRY,
)
status_conflicts = Counter(
    "operator_status_conflicts",
    "Bucket status writes refused for a stale resourceVersion (each one causes a re-plan).",
    ["pool"],
    registry=REGISTRY,
)
plan_seconds = Histogram(
    "operator_plan_seconds",
    "Time to gather facts and compute one plan (writes excluded).",
    ["pool"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def record_plan(
    pool: str,
    *,
    eligible: int,
    refused: dict[str, IneligibleReason],
    unowned: int,
    seconds: float,
) -> None:
    eligible_workers.labels(pool=pool).set(eligible)
    for reason in INELIGIBLE_REASONS:
        count = sum(1 for r in refused.values() if r == reason)
        ineligible_workers.labels(pool=pool, reason=reason).set(count)
    unowned_buckets.labels(pool=pool).set(unowned)
    plan_seconds.labels(pool=pool).observe(seconds)


def record_moves(pool: str, reasons: list[str]) -> None:
    for reason in reasons:
        if reason in MOVE_REASONS:
            bucket_moves.labels(pool=pool, reason=reason).inc()
