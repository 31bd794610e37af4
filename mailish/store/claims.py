"""Bucket claims: the fencing primitive that makes ownership safe without trusting clocks.

A worker that is told it owns bucket B at epoch E first ``claim``s it here. The claim only
moves forward: it succeeds for an epoch newer than the stored one (or the same epoch by the
same owner, so re-claiming after a reconnect is idempotent). Every write made on behalf of
the bucket runs inside ``fenced`` — a transaction that first takes ``FOR SHARE`` on the
claim row and checks it is still ours. A concurrent ``claim`` (an UPDATE of that row) waits
for in-flight fenced transactions to commit and then wins, after which every further fenced
write raises ``Fenced``. So a paused or partitioned worker that wakes up can never write
after its successor has claimed the bucket: PostgreSQL orders the two, not wall clocks.
Claim rows are never deleted, so an old epoch can never be claimed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from mailish.domain.buckets import BucketLease
from mailish.domain.errors import Fenced
from mailish.domain.ids import BucketNo, Epoch
from mailish.store.connecting import Conn

CLAIM = """
INSERT INTO bucket_claims AS c (bucket, owner, epoch, claimed_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (bucket) DO UPDATE
    SET owner = EXCLUDED.owner, epoch = EXCLUDED.epoch, claimed_at = now()
    WHERE c.epoch < EXCLUDED.epoch OR (c.epoch = EXCLUDED.epoch AND c.owner = EXCLUDED.owner)
RETURNING epoch
"""
CURRENT = "SELECT owner, epoch FROM bucket_claims WHERE bucket = $1"
CHECK_FOR_SHARE = "SELECT owner, epoch FROM bucket_claims WHERE bucket = $1 FOR SHARE"
MAX_EPOCH = "SELECT coalesce(max(epoch), 0) FROM bucket_claims"
HELD = "SELECT bucket, owner, epoch FROM bucket_claims WHERE bucket = ANY($1::int[])"


async def claim(conn: Conn, lease: BucketLease) -> None:
    """Record ``lease`` as the bucket's owner, or raise ``Fenced`` if a newer epoch exists."""
    won = await conn.fetchval(CLAIM, lease.bucket, lease.owner, lease.epoch)
    if won is None:
        row = await conn.fetchrow(CURRENT, lease.bucket)
        raise Fenced(lease.bucket, lease.epoch, row["epoch"] if row else None)


async def check(conn: Conn, lease: BucketLease) -> None:
    """Inside a transaction: lock the claim row shared and verify it is still ``lease``."""
    row = await conn.fetchrow(CHECK_FOR_SHARE, lease.bucket)
    if row is None or row["epoch"] != lease.epoch or row["owner"] != lease.owner:
        raise Fenced(lease.bucket, lease.epoch, row["epoch"] if row else None)


@contextlib.asynccontextmanager
async def fenced(conn: Conn, lease: BucketLease) -> AsyncIterator[Conn]:
    """A transaction whose writes commit only if ``lease`` is still current.

    The check runs first and holds a share lock on the claim row until commit, so a newer
    claim cannot slip in between the check and the writes.
    """
    async with conn.transaction():
        await check(conn, lease)
        yield conn


async def current(conn: Conn, *, bucket: BucketNo) -> BucketLease | None:
    row = await conn.fetchrow(CURRENT, bucket)
    if row is None:
        return None
    return BucketLease(bucket=bucket, owner=row["owner"], epoch=Epoch(row["epoch"]))


async def highest_epoch(conn: Conn) -> Epoch:
    return Epoch(int(await conn.fetchval(MAX_EPOCH)))


async def lost(conn: Conn, leases: Iterable[BucketLease]) -> set[BucketLease]:
    """Which of ``leases`` have been superseded (one query for all, for periodic audits)."""
    wanted = {lease.bucket: lease for lease in leases}
    rows = await conn.fetch(HELD, list(wanted))
    current = {row["bucket"]: (row["owner"], row["epoch"]) for row in rows}
    return {
        lease
        for bucket, lease in wanted.items()
        if current.get(bucket) != (lease.owner, lease.epoch)
    }
