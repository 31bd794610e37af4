"""The operation queue: user changes applied locally at once, then on IMAP by the owner.

The API enqueues in the same transaction as the optimistic local change and sends
``NOTIFY mailish_ops, '<account id>'`` so the owning worker wakes at commit. The worker takes
an account's due operations in id order; each status change is fenced by its bucket lease.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from mailish.store.connecting import Conn

CHANNEL = "mailish_ops"
ENQUEUE = """
INSERT INTO operations (account_id, kind, payload, revert) VALUES ($1, $2, $3, $4) RETURNING id
"""
WAKE = "SELECT pg_notify($1, $2)"
DUE = """
SELECT id, kind, payload, revert, attempts FROM operations
WHERE account_id = $1 AND status IN ('pending', 'running') AND not_before <= now()
ORDER BY id LIMIT $2
"""
GET = "SELECT id, status, error, kind FROM operations WHERE account_id = $1 AND id = $2"
SET_RUNNING = """
UPDATE operations SET status = 'running', attempts = attempts + 1, epoch = $3, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
SET_DONE = """
UPDATE operations SET status = 'done', error = NULL, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
SET_FAILED = """
UPDATE operations SET status = 'failed', error = $3, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
RETRY_LATER = """
UPDATE operations SET status = 'pending', error = $3, not_before = now() + $4::interval,
    updated_at = now()
WHERE account_id = $1 AND id = $2
"""
NEXT_DUE_AT = """
SELECT min(not_before) FROM operations WHERE account_id = $1 AND status IN ('pending', 'running')
"""


@dataclass(frozen=True, slots=True)
class Operation:
    id: int
    kind: str
    payload: dict[str, Any]
    revert: dict[str, Any] | None
    attempts: int


async def enqueue(
    conn: Conn, *, account_id: UUID, kind: str, payload: dict[str, Any], revert: dict[str, Any]
) -> int:
    op_id = await conn.fetchval(ENQUEUE, account_id, kind, payload, revert)
    await conn.execute(WAKE, CHANNEL, str(account_id))
    return int(op_id)


async def wake(conn: Conn, *, account_id: UUID) -> None:
    """Wake the owning worker at commit (sends use the same channel as operations)."""
    await conn.execute(WAKE, CHANNEL, str(account_id))


async def due(conn: Conn, *, account_id: UUID, limit: int = 50) -> list[Operation]:
    return [
        Operation(r["id"], r["kind"], r["payload"], r["revert"], r["attempts"])
        for r in await conn.fetch(DUE, account_id, limit)
    ]


async def get(conn: Conn, *, account_id: UUID, operation_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(GET, account_id, operation_id)
    return dict(row) if row is not None else None


async def set_running(conn: Conn, *, account_id: UUID, operation_id: int, epoch: int) -> None:
    await conn.execute(SET_RUNNING, account_id, operation_id, epoch)


async def set_done(conn: Conn, *, account_id: UUID, operation_id: int) -> None:
    await conn.execute(SET_DONE, account_id, operation_id)


async def set_failed(conn: Conn, *, account_id: UUID, operation_id: int, error: str) -> None:
    await conn.execute(SET_FAILED, account_id, operation_id, error[:1000])


async def retry_later(
    conn: Conn, *, account_id: UUID, operation_id: int, error: str, delay: dt.timedelta
) -> None:
    await conn.execute(RETRY_LATER, account_id, operation_id, error[:1000], delay)


async def next_due_at(conn: Conn, *, account_id: UUID) -> dt.datetime | None:
    value = await conn.fetchval(NEXT_DUE_AT, account_id)
    return value if isinstance(value, dt.datetime) else None
