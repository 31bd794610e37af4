"""The worker process: turn lease snapshots into claimed, supervised bucket runners.

For every lease the assigner hands over, a bucket runner claims ``(bucket, epoch)`` in
PostgreSQL. One audit loop re-checks all held claims in a single query; the moment a newer
epoch appears (another worker took over while this one was paused or partitioned) that
bucket's runner is stopped. Every write a runner makes is fenced on its own as well, so the
audit only makes the stop prompt; it is not what keeps data safe. Buckets that leave the
snapshot are cancelled at once. Metrics ``shards_in_sync`` and ``missing_users`` are
recomputed on every change and on each audit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import BucketNo
from mailish.observability import metrics
from mailish.observability.logs import bind
from mailish.store import accounts, claims
from mailish.store.connecting import Pool
from mailish.worker.assigning import Assigner
from mailish.worker.supervising import supervise

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerTuning:
    audit_interval: float = 2.0


class Worker:
    def __init__(self, *, pool: Pool, assigner: Assigner, tuning: WorkerTuning | None = None):
        self._pool = pool
        self._assigner = assigner
        self._tuning = tuning or WorkerTuning()
        self._runners: dict[BucketNo, tuple[BucketLease, asyncio.Task[None]]] = {}
        self._claimed: dict[BucketNo, BucketLease] = {}
        self.changed = asyncio.Event()

    @property
    def owned(self) -> frozenset[BucketLease]:
        """The leases this worker has claimed and still holds."""
        return frozenset(self._claimed.values())

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_assignments(), name="worker-assignments")
                group.create_task(self._audit(), name="worker-audit")
        finally:
            await self._stop_all()

    async def _follow_assignments(self) -> None:
        async for snapshot in self._assigner.leases():
            wanted = {lease.bucket: lease for lease in snapshot}
            for bucket, (running, task) in list(self._runners.items()):
                if wanted.get(bucket) != running:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    self._forget(running)
            for bucket, lease in wanted.items():
                if bucket not in self._runners:
                    task = asyncio.create_task(self._run_bucket(lease), name=f"bucket-{bucket}")
                    self._runners[bucket] = (lease, task)
            log.info("assignment: %d buckets wanted, %d running", len(wanted), len(self._runners))

    async def _run_bucket(self, lease: BucketLease) -> None:
        with bind(bucket=lease.bucket, epoch=lease.epoch):
            try:
                await supervise(f"bucket {lease.bucket}", lambda: self._hold(lease))
            finally:
                self._forget(lease)

    async def _hold(self, lease: BucketLease) -> None:
        """Claim the bucket and hold it until cancelled (raises ``Fenced`` if outbid)."""
        async with self._pool.acquire() as conn:
            await claims.claim(conn, lease)
        self._claimed[lease.bucket] = lease
        self._publish()
        log.debug("claimed bucket %d at epoch %d", lease.bucket, lease.epoch)
        await asyncio.Event().wait()  # per-account sync loops will run here

    def _forget(self, lease: BucketLease) -> None:
        """Drop what a finished runner for ``lease`` left behind (not a newer runner's state)."""
        entry = self._runners.get(lease.bucket)
        if entry is not None and entry[0] == lease:
            del self._runners[lease.bucket]
        if self._claimed.get(lease.bucket) == lease:
            del self._claimed[lease.bucket]
            self._publish()

    def _publish(self) -> None:
        metrics.shards_in_sync.set(len(self._claimed))
        self.changed.set()

    async def _audit(self) -> None:
        while True:
            await asyncio.sleep(self._tuning.audit_interval)
            await self.drop_lost_buckets()
            await self.refresh_missing_users()

    async def drop_lost_buckets(self) -> set[BucketLease]:
        """Stop the runners of buckets whose claim a newer epoch has superseded."""
        held = list(self._claimed.values())
        if not held:
            return set()
        async with self._pool.acquire() as conn:
            gone = await claims.lost(conn, held)
        for lease in gone:
            log.warning("bucket %d: epoch %d superseded; stopping it", lease.bucket, lease.epoch)
            metrics.fenced_writes.inc()
            entry = self._runners.get(lease.bucket)
            if entry is not None and entry[0] == lease:
                entry[1].cancel()
            self._forget(lease)
        return gone

    async def refresh_missing_users(self) -> int:
        """Accounts in owned buckets that have no running sync loop (all, until sync runs)."""
        buckets = sorted(self._claimed)
        if not buckets:
            metrics.missing_users.set(0)
            return 0
        async with self._pool.acquire() as conn:
            by_status = await accounts.count_by_status(conn, buckets=buckets)
        missing = sum(by_status.values())
        metrics.missing_users.set(missing)
        return missing

    async def _stop_all(self) -> None:
        tasks = [task for _, task in self._runners.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        self._claimed.clear()
        metrics.shards_in_sync.set(0)
