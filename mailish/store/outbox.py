"""The outbox: durable sends, claimed under a fencing epoch, resolved exactly once.

States::

    queued ──claim (fenced)──► sending ──envelope accepted (fenced)──► unknown ──250──► sent
      ▲  │                        │                                     │ └─some refused─►
      │  └─cancel (send_at ahead)► cancelled                             │   partially_sent
      │                           └──5xx──► failed ◄──5xx────────────────┤
      └──────4xx, backoff─────────────────────────────────────────────────┘

    unknown, and its worker or connection was lost ──Sent has it──► sent
                                                   └──not there──► failed ("outcome unknown")

``sending`` means DATA has not started: a row found there by a later claim (its worker died
or was fenced) is sent again safely. ``unknown`` means the server may have the message: it
is never sent again (mail goes out at most once), a Sent copy filed by the provider settles
it as sent, and otherwise it ends ``failed`` with an "outcome unknown" error for the user to
judge. Claiming an ``unknown`` row keeps it ``unknown``. Accepted recipients are remembered,
so a retry never sends to them again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from mailish.store import blobs
from mailish.store.connecting import Conn

INSERT = """
INSERT INTO outbox (id, account_id, idempotency_key, request_hash, header_message_id,
    raw_sha256, envelope_from, recipients, send_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (account_id, idempotency_key) DO NOTHING
RETURNING id
"""
BY_KEY = """
SELECT id, request_hash, header_message_id FROM outbox
WHERE account_id = $1 AND idempotency_key = $2
"""
GET = """
SELECT id, status, header_message_id, recipients, accepted, refused, error, send_at, sent_at,
    attempts
FROM outbox WHERE account_id = $1 AND id = $2
"""
CANCEL = """
UPDATE outbox SET status = 'cancelled', updated_at = now()
WHERE account_id = $1 AND id = $2 AND status = 'queued' AND send_at > now()
RETURNING id
"""
DUE = """
SELECT o.id, o.header_message_id, o.envelope_from, o.recipients, o.accepted, o.status,
    o.attempts, o.claimed_epoch, b.data AS raw
FROM outbox o JOIN message_blobs b ON b.account_id = o.account_id AND b.sha256 = o.raw_sha256
WHERE o.account_id = $1 AND o.send_at <= now()
  AND (o.status IN ('queued', 'unknown') OR (o.status = 'sending' AND o.claimed_epoch < $2))
ORDER BY o.send_at, o.created_at LIMIT 20
"""
DUE_ACCOUNTS = """
SELECT DISTINCT account_id FROM outbox
WHERE account_id = ANY($1::uuid[]) AND send_at <= now()
  AND status IN ('queued', 'unknown', 'sending')
"""
CLAIM = """
UPDATE outbox SET status = CASE WHEN status = 'unknown' THEN 'unknown' ELSE 'sending' END,
    claimed_epoch = $3, attempts = attempts + 1, updated_at = now()
WHERE account_id = $1 AND id = $2 AND status = $4
RETURNING id
"""
IN_DOUBT = """
UPDATE outbox SET status = 'unknown', updated_at = now()
WHERE account_id = $1 AND id = $2 AND status = 'sending'
"""
FINISH = """
UPDATE outbox SET status = $3, accepted = $4, refused = $5, error = $6, updated_at = now(),
    sent_at = CASE WHEN $3 IN ('sent', 'partially_sent') THEN now() ELSE sent_at END
WHERE account_id = $1 AND id = $2
"""
RETRY = """
UPDATE outbox SET status = $3, accepted = $4, error = $5, send_at = now() + $6::interval,
    updated_at = now()
WHERE account_id = $1 AND id = $2
"""


class IdempotencyConflict(RuntimeError):
    """The Idempotency-Key was used before with a different request."""


@dataclass(frozen=True, slots=True)
class Queued:
    id: UUID
    message_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class Pending:
    id: UUID
    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    accepted: tuple[str, ...]
    status: str
    attempts: int
    raw: bytes

    @property
    def remaining(self) -> tuple[str, ...]:
        done = {a.lower() for a in self.accepted}
        return tuple(r for r in self.recipients if r.lower() not in done)


async def enqueue(
    conn: Conn,
    *,
    account_id: UUID,
    key: str,
    request_hash: bytes,
    message_id: str,
    raw: bytes,
    sha256: bytes,
    envelope_from: str,
    recipients: tuple[str, ...],
    send_at: dt.datetime | None,
) -> Queued:
    """Queue once per Idempotency-Key: the same key and body return the first send."""
    existing = await conn.fetchrow(BY_KEY, account_id, key)
    if existing is None:
        await blobs.put(conn, account_id=account_id, data=raw, sha256=sha256)
        new_id = await conn.fetchval(
            INSERT, uuid.uuid4(), account_id, key, request_hash, message_id, sha256,
            envelope_from, list(recipients), send_at or dt.datetime.now(dt.UTC),
        )  # fmt: skip
        if new_id is not None:
            return Queued(new_id, message_id, created=True)
        existing = await conn.fetchrow(BY_KEY, account_id, key)  # lost a race on the key
        assert existing is not None
    if bytes(existing["request_hash"]) != request_hash:
        raise IdempotencyConflict("Idempotency-Key reused with a different request")
    return Queued(existing["id"], existing["header_message_id"], created=False)


async def get(conn: Conn, *, account_id: UUID, outbox_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(GET, account_id, outbox_id)
    return dict(row) if row is not None else None


async def cancel(conn: Conn, *, account_id: UUID, outbox_id: UUID) -> bool:
    return await conn.fetchval(CANCEL, account_id, outbox_id) is not None


async def due(conn: Conn, *, account_id: UUID, epoch: int) -> list[Pending]:
    return [
        Pending(
            id=r["id"],
            message_id=r["header_message_id"],
            envelope_from=r["envelope_from"],
            recipients=tuple(r["recipients"]),
            accepted=tuple(r["accepted"]),
            status=r["status"],
            attempts=r["attempts"],
            raw=bytes(r["raw"]),
        )
        for r in await conn.fetch(DUE, account_id, epoch)
    ]


async def accounts_with_due(conn: Conn, *, account_ids: list[UUID]) -> set[UUID]:
    return {r["account_id"] for r in await conn.fetch(DUE_ACCOUNTS, account_ids)}


async def claim(
    conn: Conn, *, account_id: UUID, outbox_id: UUID, epoch: int, from_status: str
) -> bool:
    """Inside a fenced transaction: take the row for sending (compare-and-set on status)."""
    won = await conn.fetchval(CLAIM, account_id, outbox_id, epoch, from_status)
    return won is not None


async def mark_in_doubt(conn: Conn, *, account_id: UUID, outbox_id: UUID) -> None:
    """Inside a fenced transaction, right before DATA: from now on the server may have it."""
    await conn.execute(IN_DOUBT, account_id, outbox_id)


async def finish(
    conn: Conn,
    *,
    account_id: UUID,
    outbox_id: UUID,
    status: str,
    accepted: tuple[str, ...],
    refused: dict[str, Any],
    error: str | None,
) -> None:
    await conn.execute(FINISH, account_id, outbox_id, status, list(accepted), refused, error)


async def retry_later(
    conn: Conn,
    *,
    account_id: UUID,
    outbox_id: UUID,
    status: str,
    accepted: tuple[str, ...],
    error: str,
    delay: dt.timedelta,
) -> None:
    await conn.execute(RETRY, account_id, outbox_id, status, list(accepted), error, delay)
