"""The per-account change log behind ``/v1/changes``, its live signal and its retention.

``next_modseq`` bumps ``accounts.modseq`` with an UPDATE, which row-locks the account until
the transaction ends. Concurrent writers for one account therefore commit in modseq order,
and a reader that has seen modseq N can never later find a commit with a modseq below N:
the feed has no gaps. Never use a global sequence for this.

The same statement queues ``pg_notify('mailish_changes', '<account_id>:<modseq>')``.
PostgreSQL delivers it only when (and if) the transaction commits, after the change rows are
visible, so a listener that reads the feed on a notification always finds what it announced.
A rolled-back writer announces nothing.

``trim`` is the retention: it deletes old change rows and raises ``changes_floor`` in the
same transaction, so a reader (REPEATABLE READ) sees either the rows or the floor that
explains their absence, never neither.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeAlias
from uuid import UUID

from mailish.store.connecting import Conn

CHANNEL = "mailish_changes"
_MAX_MODSEQ = 2**63 - 1

BUMP = """
WITH bumped AS (UPDATE accounts SET modseq = modseq + 1 WHERE id = $1 RETURNING id, modseq)
SELECT modseq, pg_notify($2, id::text || ':' || modseq::text) FROM bumped
"""
RECORD = """
INSERT INTO changes (account_id, modseq, object_kind, object_id, change)
SELECT $1, $2, $3, unnest($4::bigint[]), $5
ON CONFLICT (account_id, modseq, object_kind, object_id) DO UPDATE SET change =
    CASE WHEN changes.change = 'created' AND EXCLUDED.change = 'updated' THEN 'created'
         ELSE EXCLUDED.change END
"""
# Taking the account row lock first waits out in-flight writers (they hold it from
# next_modseq to commit), so every row at or below the horizon is committed before we look.
LOCK_ACCOUNT = "SELECT changes_floor FROM accounts WHERE id = $1 FOR UPDATE"
# Both walk the primary key from the floor: the cost is the rows that expire, not the log.
FIRST_YOUNG = """
SELECT modseq FROM changes
WHERE account_id = $1 AND modseq > $2 AND created_at >= clock_timestamp() - $3::interval
ORDER BY modseq LIMIT 1
"""
LAST_BELOW = """
SELECT modseq FROM changes WHERE account_id = $1 AND modseq > $2 AND modseq < $3
ORDER BY modseq DESC LIMIT 1
"""
DELETE_UPTO = "DELETE FROM changes WHERE account_id = $1 AND modseq <= $2"
RAISE_FLOOR = "UPDATE accounts SET changes_floor = $2 WHERE id = $1 AND changes_floor < $2"


async def next_modseq(conn: Conn, *, account_id: UUID) -> int:
    """Inside a transaction: the modseq for this transaction's changes (announced on commit)."""
    value = await conn.fetchval(BUMP, account_id, CHANNEL)
    if value is None:
        raise LookupError(f"account {account_id} does not exist")
    return int(value)


#: A modseq, or a function allocating the transaction's modseq when it is first needed.
ModseqSource: TypeAlias = int | Callable[[], Awaitable[int]]


class LazyModseq:
    """The transaction's modseq, allocated (``next_modseq``) on first use only: a transaction
    that turns out to change nothing leaves the account's state, and every client's view of
    it, alone."""

    def __init__(self, conn: Conn, account_id: UUID) -> None:
        self._conn = conn
        self._account_id = account_id
        self._value: int | None = None

    async def get(self) -> int:
        if self._value is None:
            self._value = await next_modseq(self._conn, account_id=self._account_id)
        return self._value


async def record(
    conn: Conn,
    *,
    account_id: UUID,
    modseq: ModseqSource,
    kind: str,
    change: str,
    object_ids: Iterable[int],
) -> None:
    ids = list(object_ids)
    if ids:
        value = modseq if isinstance(modseq, int) else await modseq()
        await conn.execute(RECORD, account_id, value, kind, ids, change)


async def trim(conn: Conn, *, account_id: UUID, older_than: dt.timedelta) -> int:
    """Forget changes older than ``older_than``; returns the account's (new) floor.

    The floor moves up to the last change below the first one that is still young, and
    every row at or below it goes; ``since`` below the floor then answers 410. (``created_at``
    is the writer's start time, so it is not strictly ordered by modseq; an old row above a
    young one simply stays until the young one expires.) Call it in a READ COMMITTED
    transaction or none: it holds the account row lock briefly, so this account's writers
    wait, nobody else does.
    """
    async with conn.transaction():
        floor = await conn.fetchval(LOCK_ACCOUNT, account_id)
        if floor is None:
            raise LookupError(f"account {account_id} does not exist")
        young = await conn.fetchval(FIRST_YOUNG, account_id, floor, older_than)
        horizon = await conn.fetchval(
            LAST_BELOW, account_id, floor, young if young is not None else _MAX_MODSEQ
        )
        if horizon is None:
            return int(floor)
        await conn.execute(DELETE_UPTO, account_id, horizon)
        await conn.execute(RAISE_FLOOR, account_id, horizon)
        return int(horizon)
