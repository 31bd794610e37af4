"""The per-account change log behind ``/v1/changes``.

``next_modseq`` bumps ``accounts.modseq`` with an UPDATE, which row-locks the account until
the transaction ends. Concurrent writers for one account therefore commit in modseq order,
and a reader that has seen modseq N can never later find a commit with a modseq below N:
the feed has no gaps. Never use a global sequence for this.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from mailish.store.connecting import Conn

BUMP = "UPDATE accounts SET modseq = modseq + 1 WHERE id = $1 RETURNING modseq"
RECORD = """
INSERT INTO changes (account_id, modseq, object_kind, object_id, change)
SELECT $1, $2, $3, unnest($4::bigint[]), $5
ON CONFLICT (account_id, modseq, object_kind, object_id) DO UPDATE SET change =
    CASE WHEN changes.change = 'created' AND EXCLUDED.change = 'updated' THEN 'created'
         ELSE EXCLUDED.change END
"""


async def next_modseq(conn: Conn, *, account_id: UUID) -> int:
    """Inside a transaction: the modseq for this transaction's changes."""
    value = await conn.fetchval(BUMP, account_id)
    if value is None:
        raise LookupError(f"account {account_id} does not exist")
    return int(value)


async def record(
    conn: Conn,
    *,
    account_id: UUID,
    modseq: int,
    kind: str,
    change: str,
    object_ids: Iterable[int],
) -> None:
    ids = list(object_ids)
    if ids:
        await conn.execute(RECORD, account_id, modseq, kind, ids, change)
