"""Every Prometheus metric mailish exports, declared in one place.

The first five are the seed service's critical metrics and keep its exact names; dashboards and
alerts depend on them. Labels stay low-cardinality: never an account id, email or folder name.
Counters appear in the exposition with Prometheus' ``_total`` suffix (``send_errors_total``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

SEND_ERROR_REASONS = ("rejected", "temporary", "auth", "tls", "connection", "unknown", "draft")
OPERATION_STATUSES = ("pending", "running", "done", "failed")
STORE_ERROR_KINDS = ("message", "folder", "operation", "outbox", "other")

send_errors = Counter(
    "send_errors", "Failed sends and failed draft saves.", ["reason"], registry=REGISTRY
)
store_errors = Counter(
    "store_errors", "Failed writes of synced mail to PostgreSQL.", ["kind"], registry=REGISTRY
)
missing_users = Gauge(
    "missing_users",
    "Accounts in this worker's buckets that are not syncing (auth_invalid, crashed, waiting).",
    registry=REGISTRY,
)
shards_in_sync = Gauge(
    "shards_in_sync", "Buckets currently owned and claimed by this worker.", registry=REGISTRY
)
user_operations = Counter(
    "user_operations", "User operations by the status they reached.", ["status"], registry=REGISTRY
)

sync_lag_seconds = Histogram(
    "sync_lag_seconds",
    "New mail: seconds from the server's INTERNALDATE to its commit in PostgreSQL.",
    registry=REGISTRY,
    buckets=(0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
fenced_writes = Counter(
    "fenced_writes", "Writes rejected because a newer bucket epoch exists.", registry=REGISTRY
)
db_pool_size = Gauge("db_pool_size", "Connections in the asyncpg pool.", registry=REGISTRY)
api_request_seconds = Histogram(
    "api_request_seconds",
    "API request latency by route template and status class.",
    ["route", "method", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _initialise_label_sets() -> None:
    """Create the known children at zero, so a rate() over them exists before the first event."""
    for reason in SEND_ERROR_REASONS:
        send_errors.labels(reason=reason)
    for kind in STORE_ERROR_KINDS:
        store_errors.labels(kind=kind)
    for status in OPERATION_STATUSES:
        user_operations.labels(status=status)


_initialise_label_sets()


def render() -> tuple[bytes, str]:
    """The text exposition and its content type, for the /metrics endpoint."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
