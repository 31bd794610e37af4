"""Devices that want a push when an account gets new mail, one row per (account, device).

A device re-registering (a new endpoint after an app reinstall) replaces its row. Removals
that come from a delivery outcome (the push service said 404/410, or too many failures)
match the endpoint too, so they never delete a registration that replaced the one that
failed while the push was in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from mailish.store.connecting import Conn

UPSERT = """
INSERT INTO push_subscriptions (account_id, device_id, endpoint) VALUES ($1, $2, $3)
ON CONFLICT (account_id, device_id) DO UPDATE SET endpoint = EXCLUDED.endpoint,
    failures = CASE WHEN push_subscriptions.endpoint = EXCLUDED.endpoint
                    THEN push_subscriptions.failures ELSE 0 END,
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""
DELETE = "DELETE FROM push_subscriptions WHERE account_id = $1 AND device_id = $2"
DROP = """
DELETE FROM push_subscriptions WHERE account_id = $1 AND device_id = $2 AND endpoint = $3
"""
LIST = """
SELECT device_id, endpoint, failures FROM push_subscriptions WHERE account_id = $1
ORDER BY device_id
"""
FAILED = """
UPDATE push_subscriptions SET failures = failures + 1, updated_at = now()
WHERE account_id = $1 AND device_id = $2 AND endpoint = $3
RETURNING failures
"""
DELIVERED = """
UPDATE push_subscriptions SET failures = 0, updated_at = now()
WHERE account_id = $1 AND device_id = $2 AND endpoint = $3 AND failures > 0
"""


@dataclass(frozen=True, slots=True)
class Subscription:
    account_id: UUID
    device_id: str
    endpoint: str
    failures: int = 0


async def upsert(conn: Conn, *, account_id: UUID, device_id: str, endpoint: str) -> bool:
    """Register or re-point a device; True if it was new."""
    return bool(await conn.fetchval(UPSERT, account_id, device_id, endpoint))


async def delete(conn: Conn, *, account_id: UUID, device_id: str) -> bool:
    """The user unsubscribed a device; False if there was none."""
    status: str = await conn.execute(DELETE, account_id, device_id)
    return status != "DELETE 0"


async def list_for(conn: Conn, *, account_id: UUID) -> list[Subscription]:
    rows = await conn.fetch(LIST, account_id)
    return [
        Subscription(account_id, row["device_id"], row["endpoint"], row["failures"]) for row in rows
    ]


async def drop(conn: Conn, *, subscription: Subscription) -> None:
    s = subscription
    await conn.execute(DROP, s.account_id, s.device_id, s.endpoint)


async def record_failure(conn: Conn, *, subscription: Subscription) -> int:
    """Count a failed delivery; returns the consecutive failures so far (0 if gone)."""
    s = subscription
    return int(await conn.fetchval(FAILED, s.account_id, s.device_id, s.endpoint) or 0)


async def record_delivery(conn: Conn, *, subscription: Subscription) -> None:
    s = subscription
    await conn.execute(DELIVERED, s.account_id, s.device_id, s.endpoint)
