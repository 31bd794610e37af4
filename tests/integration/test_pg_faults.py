"""PostgreSQL faults under a running worker: its sessions killed, and the server itself
stopped with ``pg_ctl stop -m immediate`` while a commit's reply is in flight.

The worker runs for real (assignment, audit, account loop against Dovecot). What must hold:
the worker process survives, reconnects within 30 s of the database being back, and the
mailbox converges (every folder's UID -> sha256 and flags equal the server's, no duplicates,
nothing missing). The immediate shutdown uses a throwaway cluster of its own, never the
shared session cluster; a fault proxy in front of its socket lets the test hold the reply to
a COMMIT, so the crash lands exactly between "COMMIT sent" and "commit acknowledged".
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import Epoch
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import connecting, migrating
from mailish.store.connecting import Pool
from mailish.store.embedded import EmbeddedPostgres, find_binaries
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness.ca import LocalCA
from tests.harness.convergence import converged
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.fault_proxy import DOWN, UP, FaultProxy, Rule

RECONNECT_LIMIT = 30.0
TUNING = WorkerTuning(audit_interval=0.1, sync=SyncTuning(batch=20, poll_interval=5))


async def link_account(
    pool: Pool, dovecot: Dovecot, user: MailUser, keyring: KeyRing, policy: ConnectionPolicy
) -> UUID:
    linked = await link(
        pool,
        LinkRequest(
            email=f"{user.name}@example.test", password=user.password, username=user.name,
            imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS), smtp=None,
        ),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    return linked.account_id  # type: ignore[return-value]


async def stored_count(dsn: str, account_id: UUID) -> int | None:
    """Messages stored so far, read on a connection of its own (None while the DB is down)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND expunged_at IS NULL",
            account_id,
        )
        return count
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        await conn.close()


async def wait_converged(
    dsn: str, dovecot: Dovecot, user: MailUser, account_id: UUID, ca: LocalCA, limit: float
) -> float:
    """Seconds until the store equals the server; on failure, says how far it got."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last: object = None
    try:
        async with asyncio.timeout(limit):
            while True:
                try:
                    conn = await asyncpg.connect(dsn, timeout=2)
                    try:
                        local, server, duplicates = await converged(
                            conn, dovecot, user, account_id, str(ca.ca_file)
                        )
                        account = await conn.fetchrow(
                            "SELECT status, sync_state, last_error FROM accounts WHERE id = $1",
                            account_id,
                        )
                    finally:
                        await conn.close()
                    assert not duplicates, duplicates
                    if local == server:
                        return loop.time() - started
                    last = (dict(account or {}), {p: len(f) for p, f in local.items()})
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    last = exc
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not converged within {limit} s; last seen: {last}") from None


async def wait_until(check: object, limit: float) -> None:
    async with asyncio.timeout(limit):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.fixture
async def running_worker(
    request: pytest.FixtureRequest, keyring: KeyRing, policy: ConnectionPolicy
) -> AsyncIterator[object]:
    """Start a worker on a pool with ``start(pool)``; it is stopped at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def start(pool: Pool) -> asyncio.Task[None]:
        worker = Worker(
            pool=pool, assigner=StaticAssigner(buckets=4, owner="w", epoch=Epoch(1)),
            keyring=keyring, policy=policy, tuning=TUNING,
        )  # fmt: skip
        task = asyncio.create_task(worker.run(), name="worker-under-faults")
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- pg_terminate_backend -------------------------------------------------------------------


async def test_terminated_sessions_reconnect_and_the_mailbox_converges(
    db_pool: Pool, db_dsn: str, dovecot: Dovecot, mail_user: MailUser, keyring: KeyRing,
    policy: ConnectionPolicy, test_ca: LocalCA, running_worker: object,
) -> None:  # fmt: skip
    """Every session of this test's database is terminated five times while the initial
    sync runs (idle pool connections, the LISTEN connection, transactions mid-flight)."""
    dovecot.load_maildir(mail_user, 400)
    account_id = await link_account(db_pool, dovecot, mail_user, keyring, policy)
    worker = running_worker(db_pool)  # type: ignore[operator]

    async def started() -> bool:
        return bool(await stored_count(db_dsn, account_id))

    await wait_until(started, 30)
    admin = await asyncpg.connect(db_dsn)
    try:
        killed = 0
        for _ in range(5):
            killed += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    assert killed >= 5
    took = await wait_converged(db_dsn, dovecot, mail_user, account_id, test_ca, RECONNECT_LIMIT)
    assert not worker.done(), worker
    # The live loop, not only a restarted pass: new mail still arrives.
    dovecot.deliver(mail_user, b"From: a@example.org\r\nSubject: after\r\n\r\nstill here\r\n")
    await wait_converged(db_dsn, dovecot, mail_user, account_id, test_ca, RECONNECT_LIMIT)
    assert took < RECONNECT_LIMIT


# -- pg_ctl stop -m immediate during a commit -----------------------------------------------


def _as_postgres() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    owner = pwd.getpwnam("postgres")
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def pg_ctl(cluster: EmbeddedPostgres, *args: str) -> None:
    """pg_ctl on the throwaway cluster, as the server's user (PostgreSQL refuses root)."""
    argv = [str(find_binaries() / "pg_ctl"), "-D", str(cluster.data), *args]
    subprocess.run(
        argv, check=True, capture_output=True, stdin=subprocess.DEVNULL, cwd=cluster.root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
        **_as_postgres(),  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own (the shared session cluster must never be stopped)."""
    root = Path(tempfile.mkdtemp(prefix="mailish-test-pgfault-"))
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root, durable=False, database="mailish")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_immediate_shutdown_during_a_commit_then_restart(
    own_cluster: EmbeddedPostgres, dovecot: Dovecot, mail_user: MailUser, keyring: KeyRing,
    policy: ConnectionPolicy, test_ca: LocalCA, running_worker: object,
) -> None:  # fmt: skip
    direct = own_cluster.dsn()
    conn = await connecting.connect(direct)
    try:
        await migrating.migrate(conn)
    finally:
        await conn.close()
    assert own_cluster.socket_dir is not None
    socket_path = own_cluster.socket_dir / f".s.PGSQL.{own_cluster.port}"
    async with FaultProxy(socket_path) as proxy:
        proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}/mailish?sslmode=disable"
        pool = await connecting.connect_pool(proxied, min_size=1, max_size=10)
        worker: asyncio.Task[None] | None = None
        try:
            dovecot.load_maildir(mail_user, 300)
            account_id = await link_account(pool, dovecot, mail_user, keyring, policy)
            worker = running_worker(pool)  # type: ignore[operator]

            async def started() -> bool:
                return bool(await stored_count(direct, account_id))

            await wait_until(started, 30)
            # Hold the server's answer to the next COMMIT the worker sends...
            held = proxy.add(Rule(DOWN, "stall", marker=b"COMMIT", watch=UP))
            async with asyncio.timeout(30):
                await held.triggered.wait()
            # ...and crash the server while the client waits for it.
            await asyncio.to_thread(pg_ctl, own_cluster, "stop", "-m", "immediate", "-w")
            proxy.remove(held)
            await asyncio.sleep(1.0)  # the worker meets a dead database for a while
            await asyncio.to_thread(
                pg_ctl, own_cluster, "start", "-w", "-t", "60", "-l", str(own_cluster.log_path)
            )
            took = await wait_converged(
                direct, dovecot, mail_user, account_id, test_ca, RECONNECT_LIMIT
            )
            assert not worker.done(), worker
            dovecot.deliver(mail_user, b"From: a@example.org\r\nSubject: after\r\n\r\nback\r\n")
            await wait_converged(direct, dovecot, mail_user, account_id, test_ca, RECONNECT_LIMIT)
        finally:
            if worker is not None:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            await asyncio.wait_for(pool.close(), 10)
    assert took < RECONNECT_LIMIT
