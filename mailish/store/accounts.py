"""The accounts aggregate: the rows a worker enumerates per bucket, and their sync progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailish.domain.ids import AccountId, BucketNo
from mailish.store.connecting import Conn

COUNT_BY_STATUS_IN_BUCKETS = """
SELECT status, count(*) AS n FROM accounts WHERE bucket = ANY($1::int[]) GROUP BY status
"""
LIST_IN_BUCKET = """
SELECT id, email, status FROM accounts WHERE bucket = $1 ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class AccountRef:
    id: AccountId
    email: str
    status: str


async def list_in_bucket(conn: Conn, *, bucket: BucketNo) -> list[AccountRef]:
    rows = await conn.fetch(LIST_IN_BUCKET, bucket)
    return [AccountRef(AccountId(r["id"]), r["email"], r["status"]) for r in rows]


async def count_by_status(conn: Conn, *, buckets: list[BucketNo]) -> dict[str, int]:
    rows = await conn.fetch(COUNT_BY_STATUS_IN_BUCKETS, buckets)
    return {r["status"]: int(r["n"]) for r in rows}


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: AccountId
    email: str
    bucket: BucketNo
    status: str
    settings: dict[str, Any]
    auth_kind: str
    credentials: bytes | None


INSERT = """
INSERT INTO accounts (id, email, display_name, bucket, provider, settings, auth_kind,
    credentials, credentials_key_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
GET = """
SELECT id, email, bucket, status, settings, auth_kind, credentials FROM accounts WHERE id = $1
"""
BY_EMAIL = "SELECT id FROM accounts WHERE lower(email) = lower($1)"
LIST_ALL = """
SELECT id, email, bucket, status, sync_state, messages_synced, messages_total, folders_synced,
    folders_total, last_error, last_sync_at
FROM accounts ORDER BY email
"""
# From the folder rows alone (each folder's ``total`` is its live message count, kept by
# ``folders.recount``), so an account of 100,000 messages costs no message scan per folder
# save; and no row version is written when nothing moved.
PROGRESS = """
UPDATE accounts a SET
    messages_synced = p.synced, messages_total = p.total,
    folders_total = p.folders_total, folders_synced = p.folders_synced, updated_at = now()
FROM (SELECT coalesce(sum(total), 0) AS synced,
             coalesce(sum(server_exists) FILTER (
                 WHERE selectable AND sync_phase <> 'flagged'), 0) AS total,
             count(*) FILTER (WHERE selectable) AS folders_total,
             count(*) FILTER (WHERE selectable AND sync_phase = 'synced') AS folders_synced
      FROM folders WHERE account_id = $1) p
WHERE a.id = $1
  AND (a.messages_synced, a.messages_total, a.folders_total, a.folders_synced)
      IS DISTINCT FROM (p.synced, p.total, p.folders_total, p.folders_synced)
"""
SET_SYNC_STATE = """
UPDATE accounts SET sync_state = $2, last_error = $3,
    last_sync_at = CASE WHEN $2 = 'idle' THEN now() ELSE last_sync_at END
WHERE id = $1
"""
SET_STATUS = "UPDATE accounts SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1"
STATUS_ROW = """
SELECT email, status, status_reason, sync_state, messages_synced, messages_total,
    folders_synced, folders_total, last_error, last_sync_at, bucket
FROM accounts WHERE lower(email) = lower($1)
"""


async def create(
    conn: Conn,
    *,
    account_id: AccountId,
    email: str,
    display_name: str | None,
    bucket: BucketNo,
    provider: str | None,
    settings: dict[str, Any],
    auth_kind: str,
    credentials: bytes,
    key_id: str,
) -> None:
    await conn.execute(
        INSERT, account_id, email, display_name, bucket, provider, settings, auth_kind,
        credentials, key_id,
    )  # fmt: skip


async def get(conn: Conn, *, account_id: AccountId) -> AccountRecord | None:
    row = await conn.fetchrow(GET, account_id)
    if row is None:
        return None
    return AccountRecord(
        id=AccountId(row["id"]),
        email=row["email"],
        bucket=BucketNo(row["bucket"]),
        status=row["status"],
        settings=row["settings"],
        auth_kind=row["auth_kind"],
        credentials=row["credentials"],
    )


async def find_by_email(conn: Conn, *, email: str) -> AccountId | None:
    value = await conn.fetchval(BY_EMAIL, email)
    return AccountId(value) if value is not None else None


async def list_all(conn: Conn) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST_ALL)]


async def status_by_email(conn: Conn, *, email: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(STATUS_ROW, email)
    return dict(row) if row is not None else None


async def refresh_progress(conn: Conn, *, account_id: AccountId) -> None:
    await conn.execute(PROGRESS, account_id)


async def set_sync_state(
    conn: Conn, *, account_id: AccountId, state: str, last_error: str | None
) -> None:
    await conn.execute(SET_SYNC_STATE, account_id, state, last_error)


async def set_status(conn: Conn, *, account_id: AccountId, status: str, reason: str | None) -> None:
    await conn.execute(SET_STATUS, account_id, status, reason)


ACTIVE_IN_BUCKETS = """
SELECT id, email, bucket, status, settings, auth_kind, credentials FROM accounts
WHERE bucket = ANY($1::int[]) AND status = 'active' ORDER BY id
"""


async def active_in_buckets(conn: Conn, *, buckets: list[BucketNo]) -> list[AccountRecord]:
    return [
        AccountRecord(
            id=AccountId(r["id"]),
            email=r["email"],
            bucket=BucketNo(r["bucket"]),
            status=r["status"],
            settings=r["settings"],
            auth_kind=r["auth_kind"],
            credentials=r["credentials"],
        )
        for r in await conn.fetch(ACTIVE_IN_BUCKETS, buckets)
    ]


ADD_SYNCED = "UPDATE accounts SET messages_synced = messages_synced + $2 WHERE id = $1"


async def add_synced(conn: Conn, *, account_id: AccountId, count: int) -> None:
    """Cheap progress between full recounts (``refresh_progress`` corrects any drift)."""
    if count:
        await conn.execute(ADD_SYNCED, account_id, count)


DELETE = "DELETE FROM accounts WHERE id = $1"


async def delete(conn: Conn, *, account_id: AccountId) -> None:
    """Unlink: every table cascades from accounts (tokens, mail, queue, push devices)."""
    await conn.execute(DELETE, account_id)


DISPLAY_NAME = "SELECT display_name FROM accounts WHERE id = $1"


async def display_name(conn: Conn, *, account_id: AccountId) -> str | None:
    value = await conn.fetchval(DISPLAY_NAME, account_id)
    return str(value) if value else None
