"""Account credentials at rest: locked reads, compare-and-set writes, and key-rotation scans.

The blobs are opaque here (``mail.credentials.KeyRing`` seals and opens them); this module
only guarantees *how* they change:

- ``lock_account`` takes a transaction-scoped advisory lock per account, so "read the
  credentials, maybe refresh at the provider, write the rotated token" runs once at a time
  across every process sharing the database. It is released by COMMIT/ROLLBACK, so a crashed
  worker cannot leave it held.
- ``compare_and_set`` writes only if the row still holds the blob the caller read, so a key
  rotation racing a token refresh can never overwrite the newer refresh token with an old one.
  Every writer also takes (or tries) the lock, so the refresh's own compare-and-set cannot miss
  after the provider has already rotated the refresh token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailish.domain.ids import AccountId
from mailish.store.connecting import Conn

# One 64-bit lock key per account; the prefix keeps it apart from other advisory-lock users.
LOCK = """
SELECT pg_advisory_xact_lock(hashtextextended('mailish.credentials:' || $1::uuid::text, 0))
"""
TRY_LOCK = """
SELECT pg_try_advisory_xact_lock(hashtextextended('mailish.credentials:' || $1::uuid::text, 0))
"""
LOAD = "SELECT auth_kind, credentials, credentials_key_id FROM accounts WHERE id = $1"
COMPARE_AND_SET = """
UPDATE accounts SET credentials = $3, credentials_key_id = $4, updated_at = now()
WHERE id = $1 AND credentials = $2
"""
REPLACE = """
UPDATE accounts SET credentials = $2, credentials_key_id = $3, auth_kind = $4,
    status = 'active', status_reason = NULL, updated_at = now()
WHERE id = $1
"""
BATCH_AFTER = """
SELECT id, credentials FROM accounts
WHERE credentials IS NOT NULL AND ($1::uuid IS NULL OR id > $1)
ORDER BY id LIMIT $2
"""
COUNT_BY_KEY = """
SELECT coalesce(credentials_key_id, '') AS key_id, count(*) AS n FROM accounts
WHERE credentials IS NOT NULL GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    auth_kind: str
    blob: bytes = field(repr=False)
    key_id: str | None


async def lock_account(conn: Conn, *, account_id: AccountId) -> None:
    """Block until this transaction holds the account's credential lock. Must run inside a
    transaction: outside one, the lock would be released at once."""
    assert conn.is_in_transaction(), "lock_account needs a transaction"
    await conn.execute(LOCK, account_id)


async def try_lock_account(conn: Conn, *, account_id: AccountId) -> bool:
    """``lock_account`` without waiting: False while someone (a token refresh) holds it."""
    assert conn.is_in_transaction(), "try_lock_account needs a transaction"
    return bool(await conn.fetchval(TRY_LOCK, account_id))


async def load(conn: Conn, *, account_id: AccountId) -> StoredCredentials | None:
    row = await conn.fetchrow(LOAD, account_id)
    if row is None or row["credentials"] is None:
        return None
    return StoredCredentials(row["auth_kind"], bytes(row["credentials"]), row["credentials_key_id"])


async def compare_and_set(
    conn: Conn, *, account_id: AccountId, expected: bytes, blob: bytes, key_id: str
) -> bool:
    """Write ``blob`` only if the row still holds ``expected``; False means someone else won."""
    status = await conn.execute(COMPARE_AND_SET, account_id, expected, blob, key_id)
    return status.endswith(" 1")


async def replace(
    conn: Conn, *, account_id: AccountId, blob: bytes, key_id: str, auth_kind: str
) -> bool:
    """New credentials from the user (PUT /v1/account/credentials): overwrite and reactivate
    an account that was ``auth_invalid``. Callers should hold ``lock_account``."""
    status = await conn.execute(REPLACE, account_id, blob, key_id, auth_kind)
    return status.endswith(" 1")


async def batch_after(
    conn: Conn, *, after: AccountId | None, limit: int
) -> list[tuple[AccountId, bytes]]:
    """Keyset-paged scan of every sealed credential, by account id (stable under updates)."""
    rows = await conn.fetch(BATCH_AFTER, after, limit)
    return [(AccountId(r["id"]), bytes(r["credentials"])) for r in rows]


async def count_by_key_id(conn: Conn) -> dict[str, int]:
    """How many credentials each key id seals (from the column, for progress reports)."""
    return {r["key_id"]: int(r["n"]) for r in await conn.fetch(COUNT_BY_KEY)}
