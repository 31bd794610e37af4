"""The worker process: turn lease snapshots into claimed, supervised bucket runners.

For every lease the assigner hands over, a bucket runner claims ``(bucket, epoch)`` in
PostgreSQL. One audit loop re-checks all held claims in a single query; the moment a newer
epoch appears (another worker took over while this one was paused or partitioned) that
bucket's runner is stopped. Every write a runner makes is fenced on its own as well, so the
audit only makes the stop prompt; it is not what keeps data safe. Buckets that leave the
snapshot are cancelled at once.

The same audit reconciles accounts: every active account in a held bucket gets one
``AccountRunner`` task; accounts that left, were unlinked or lost their credentials are
stopped. Metrics ``shards_in_sync`` and ``missing_users`` (accounts in held buckets that are
not syncing) are recomputed on every change and on each audit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import AccountId, BucketNo
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.policy import ConnectionPolicy
from mailish.mail.tls import https_client
from mailish.observability import metrics
from mailish.observability.logs import bind
from mailish.store import accounts, claims, operations, outbox
from mailish.store.accounts import AccountRecord
from mailish.store.connecting import CONNECTION_ERRORS, Conn, Pool
from mailish.worker.account_runner import AccountRunner
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import Assigner
from mailish.worker.pushing import Pusher
from mailish.worker.supervising import Backoff, supervise

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerTuning:
    audit_interval: float = 2.0
    sync: SyncTuning = field(default_factory=SyncTuning)
    #: Accounts connecting, logging in and running their first round at once (see
    #: ``AccountRunner.startup_gate``).
    startup_concurrency: int = 50


class Worker:
    def __init__(
        self,
        *,
        pool: Pool,
        assigner: Assigner,
        keyring: KeyRing | None = None,
        policy: ConnectionPolicy | None = None,
        tuning: WorkerTuning | None = None,
        dsn: str | None = None,
        broker: TokenBroker | None = None,
    ):
        self._pool = pool
        self._assigner = assigner
        self._keyring = keyring
        self._policy = policy or ConnectionPolicy()
        self._tuning = tuning or WorkerTuning()
        self._accounts: dict[AccountId, tuple[AccountRunner, asyncio.Task[None]]] = {}
        self._backoff = Backoff(initial=0.5, maximum=10.0)
        self._startup_gate = asyncio.Semaphore(self._tuning.startup_concurrency)
        self._dsn = dsn  # enables device push (the Pusher LISTENs on its own connection)
        self._broker = broker
        self._started = False
        self.pusher: Pusher | None = None
        self._runners: dict[BucketNo, tuple[BucketLease, asyncio.Task[None]]] = {}
        self._claimed: dict[BucketNo, BucketLease] = {}
        self.changed = asyncio.Event()

    @property
    def started(self) -> bool:
        """Ready for traffic: the first assignment has been received and acted on."""
        return self._started

    @property
    def owned(self) -> frozenset[BucketLease]:
        """The leases this worker has claimed and still holds."""
        return frozenset(self._claimed.values())

    async def run(self) -> None:
        # pushes verify like every outbound TLS peer (system store + MAILISH_TLS_CA_FILE)
        async with https_client(self._policy.ca_files) as http:
            if self._dsn is not None:
                self.pusher = Pusher(
                    pool=self._pool, dsn=self._dsn, http=http,
                    owns=lambda account: self.runner(AccountId(account)) is not None,
                    allow_private_hosts=self._policy.allow_private_hosts,
                )  # fmt: skip
            await self._run()

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                if self.pusher is not None:
                    group.create_task(self.pusher.run(), name="worker-pusher")
                group.create_task(self._follow_assignments(), name="worker-assignments")
                group.create_task(self._audit(), name="worker-audit")
                group.create_task(self._listen_for_operations(), name="worker-ops-listener")
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
            self._started = True
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
        """Re-check claims and accounts every ``audit_interval``.

        A database outage (a restart, a failover, terminated sessions) must not end the
        worker: the audit retries with backoff, and the account loops, which fail and are
        restarted by this audit, reconnect through the pool once the database is back.
        """
        attempt = 0
        while True:
            delay = self._tuning.audit_interval
            try:
                await self.drop_lost_buckets()
                await self.reconcile_accounts()
                await self.refresh_missing_users()
                await self.wake_due_sends()
                attempt = 0
            except CONNECTION_ERRORS as exc:
                delay = max(delay, self._backoff.delay(attempt))
                attempt += 1
                log.warning("audit failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)

    async def wake_due_sends(self) -> None:
        """Scheduled sends (send_at in the future) produce no NOTIFY when they fall due."""
        if not self._accounts:
            return
        async with self._pool.acquire() as conn:
            due = await outbox.accounts_with_due(conn, account_ids=list(self._accounts))
        for account_id in due:
            runner = self.runner(AccountId(account_id))
            if runner is not None and runner.sync is not None:
                runner.sync.ops_wanted.set()

    async def _listen_for_operations(self) -> None:
        """One LISTEN connection wakes the account loop the API just queued work for."""

        def wake(_conn: Conn, _pid: int, _channel: str, payload: object) -> None:
            try:
                entry = self._accounts.get(AccountId(uuid.UUID(str(payload))))
            except ValueError:
                return
            if entry is not None and entry[0].sync is not None:
                entry[0].sync.ops_wanted.set()

        attempt = 0
        while True:
            try:
                async with self._pool.acquire() as conn:
                    closed = asyncio.Event()
                    conn.add_termination_listener(lambda _c, done=closed: done.set())
                    await conn.add_listener(operations.CHANNEL, wake)
                    attempt = 0
                    try:
                        await closed.wait()
                    finally:
                        if not conn.is_closed():
                            await conn.remove_listener(operations.CHANNEL, wake)
            except CONNECTION_ERRORS as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("operations listener lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def runner(self, account_id: AccountId) -> AccountRunner | None:
        entry = self._accounts.get(account_id)
        return entry[0] if entry else None

    async def reconcile_accounts(self) -> None:
        """Start a runner for every active account in a held bucket; stop the others."""
        if self._keyring is None:
            return
        held = dict(self._claimed)
        wanted: dict[AccountId, AccountRecord] = {}
        if held:
            async with self._pool.acquire() as conn:
                for record in await accounts.active_in_buckets(conn, buckets=sorted(held)):
                    wanted[record.id] = record
        for account_id, (runner, task) in list(self._accounts.items()):
            current = wanted.get(account_id)
            stale = current is None or runner.lease != held.get(current.bucket)
            changed = current is not None and current.credentials != runner.record.credentials
            if stale or changed or task.done():
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                elif not task.cancelled() and (failure := task.exception()) is not None:
                    # The runner's own error handling failed (e.g. the database went away
                    # while it recorded an error): say so once, then start it afresh.
                    log.warning("account runner ended with %s: %s; restarting it",
                                type(failure).__name__, failure)  # fmt: skip
                del self._accounts[account_id]
        for account_id, record in wanted.items():
            if account_id in self._accounts:
                continue
            runner = AccountRunner(
                pool=self._pool, lease=held[record.bucket], record=record,
                keyring=self._keyring, policy=self._policy, tuning=self._tuning.sync,
                pusher=self.pusher, broker=self._broker, startup_gate=self._startup_gate,
            )  # fmt: skip
            task = asyncio.create_task(runner.run(), name=f"account-{account_id}")
            self._accounts[account_id] = (runner, task)

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
        if gone:
            await self.reconcile_accounts()
        return gone

    async def refresh_missing_users(self) -> int:
        """Accounts in held buckets without a healthy sync loop (auth_invalid, failing, new)."""
        buckets = sorted(self._claimed)
        if not buckets:
            metrics.missing_users.set(0)
            return 0
        async with self._pool.acquire() as conn:
            by_status = await accounts.count_by_status(conn, buckets=buckets)
        healthy = sum(
            1
            for runner, task in self._accounts.values()
            if runner.healthy and not task.done() and runner.lease.bucket in self._claimed
        )
        missing = max(0, sum(by_status.values()) - healthy)
        metrics.missing_users.set(missing)
        return missing

    async def _stop_all(self) -> None:
        tasks = [task for _, task in self._runners.values()]
        tasks += [task for _, task in self._accounts.values()]
        self._accounts.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        self._claimed.clear()
        metrics.shards_in_sync.set(0)
