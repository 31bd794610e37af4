"""The worker claims what it is assigned and lets go of what a newer epoch takes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import BucketNo, Epoch
from mailish.observability import metrics
from mailish.store import claims
from mailish.store.connecting import Pool
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning

FAST = WorkerTuning(audit_interval=0.1)


class ScriptedAssigner:
    """Feeds lease snapshots from a queue, like the Kubernetes watch will."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[frozenset[BucketLease]] = asyncio.Queue()

    async def leases(self) -> AsyncIterator[frozenset[BucketLease]]:
        while True:
            yield await self.queue.get()


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def gauge(metric) -> float:  # type: ignore[no-untyped-def]
    return float(metric._value.get())


async def test_static_worker_claims_every_bucket_and_counts_missing_users(db_pool: Pool) -> None:
    async with db_pool.acquire() as conn:
        for bucket in (0, 1, 1):
            account = uuid.uuid4()
            await conn.execute(
                "INSERT INTO accounts (id, email, bucket) VALUES ($1, $2, $3)",
                account, f"{account.hex}@example.com", bucket,
            )  # fmt: skip
    worker = Worker(
        pool=db_pool,
        assigner=StaticAssigner(buckets=4, owner="w1", epoch=Epoch(1)),
        tuning=FAST,
    )
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: len(worker.owned) == 4)
        assert gauge(metrics.shards_in_sync) == 4
        assert await worker.refresh_missing_users() == 3
        assert gauge(metrics.missing_users) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gauge(metrics.shards_in_sync) == 0


async def test_worker_stops_a_bucket_a_newer_epoch_took(db_pool: Pool) -> None:
    assigner = ScriptedAssigner()
    worker = Worker(pool=db_pool, assigner=assigner, tuning=FAST)
    task = asyncio.create_task(worker.run())
    try:
        mine = frozenset(BucketLease(BucketNo(b), "paused-worker", Epoch(1)) for b in range(3))
        await assigner.queue.put(mine)
        await wait_for(lambda: worker.owned == mine)
        # Another worker takes bucket 1 while this one still believes it owns it.
        async with db_pool.acquire() as conn:
            await claims.claim(conn, BucketLease(BucketNo(1), "successor", Epoch(2)))
        await wait_for(lambda: len(worker.owned) == 2)
        assert {lease.bucket for lease in worker.owned} == {0, 2}
        # The assignment moves bucket 2 away: it is dropped without any claim conflict.
        await assigner.queue.put(frozenset(x for x in mine if x.bucket == 0))
        await wait_for(lambda: {lease.bucket for lease in worker.owned} == {0})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_worker_started_with_a_stale_epoch_claims_nothing(db_pool: Pool) -> None:
    async with db_pool.acquire() as conn:
        await claims.claim(conn, BucketLease(BucketNo(0), "newer", Epoch(9)))
    worker = Worker(
        pool=db_pool, assigner=StaticAssigner(buckets=1, owner="old", epoch=Epoch(3)), tuning=FAST
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)
        assert worker.owned == frozenset()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
