"""New mail reaches PostgreSQL within 2 s of delivery (p95), with NOTIFY and with IDLE."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from mailish.observability.metrics import REGISTRY
from mailish.store.connecting import Pool
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked

DELIVERIES = 12


async def wait_for_subject(pool: Pool, account_id: object, subject: str, limit: float) -> float:
    started = time.monotonic()
    async with pool.acquire() as conn:
        while time.monotonic() - started < limit:
            found = await conn.fetchval(
                "SELECT 1 FROM messages WHERE account_id=$1 AND subject=$2", account_id, subject
            )
            if found:
                return time.monotonic() - started
            await asyncio.sleep(0.01)
    raise AssertionError(f"{subject!r} not synced within {limit}s")


@pytest.mark.parametrize("use_notify", [True, False], ids=["notify", "idle"])
async def test_new_mail_appears_within_two_seconds(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, use_notify: bool
) -> None:
    dovecot.load_maildir(linked.user, 20)
    sync = linked.sync(db_pool, use_notify=use_notify, poll_interval=30.0)
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.synced.wait(), 20)
        latencies = []
        for i in range(DELIVERIES):
            subject = f"fresh {use_notify} {i}"
            raw = f"From: a@example.org\r\nSubject: {subject}\r\n\r\nbody {i}\r\n".encode()
            await asyncio.to_thread(dovecot.deliver, linked.user, raw)  # returns once stored
            latencies.append(await wait_for_subject(db_pool, linked.account_id, subject, 10.0))
        p95 = statistics.quantiles(latencies, n=20)[-1]
        print(
            f"delivery to PostgreSQL ({'NOTIFY' if use_notify else 'IDLE'}): "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        )
        assert p95 < 2.0
        lag = REGISTRY.get_sample_value("sync_lag_seconds_count")
        assert lag is not None and lag >= DELIVERIES  # new mail feeds the sync-lag histogram
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_idle_notices_mail_that_arrived_before_it_started(
    db_pool: Pool, dovecot: Dovecot, linked: Linked
) -> None:
    """Mail delivered between the end of a round and the start of IDLE must not wait for
    the next poll (it produces no event once IDLE begins)."""
    from mailish.domain.logins import PasswordLogin
    from mailish.mail.imap.connection import ImapConnection
    from mailish.mail.imap.session import ImapSession

    dovecot.load_maildir(linked.user, 5)
    sync = linked.sync(db_pool, use_notify=False, poll_interval=30.0)
    conn = await ImapConnection.open(linked.imap)
    try:
        await conn.login(PasswordLogin(linked.user.name, linked.user.password))
        session = ImapSession(conn)
        await session.enable_extensions()
        await sync.sync_all(session)  # ends with Trash selected, not INBOX
        dovecot.deliver(linked.user, b"Subject: in the gap\r\n\r\nx\r\n")
        started = time.monotonic()
        dirty = await sync._wait_idle(session)
        assert dirty == {"INBOX"}
        assert time.monotonic() - started < 2
    finally:
        await conn.logout()
