"""Network faults between mailish and real servers, placed by the fault proxy.

IMAP goes through the proxy to Dovecot's plaintext port (plaintext allowed for the test), so
a rule can land on an exact byte of a FETCH literal; the ground truth is read from Dovecot
directly over TLS. SMTP goes through the proxy with STARTTLS intact, cut by byte count.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import TransientError
from mailish.domain.ids import AccountId, BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing
from mailish.mail.imap import wire
from mailish.mail.imap.connection import ConnectionLost, ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import accounts, claims
from mailish.store.connecting import Pool
from mailish.worker.account_runner import AccountRunner
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from mailish.worker.supervising import Backoff
from tests.harness.ca import LocalCA
from tests.harness.convergence import assert_converged
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.fault_proxy import DOWN, UP, FaultProxy, Rule
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import Linked, serve

SIZE = 4000  # every test message has exactly this many bytes, so literal offsets are known


def message(i: int) -> bytes:
    """A CRLF message of exactly SIZE bytes (Dovecot serves CRLF mail byte for byte)."""
    head = (
        f"From: sender{i}@example.org\r\nTo: alice@example.test\r\n"
        f"Subject: fault test {i}\r\nMessage-ID: <fault-{i}@example.org>\r\n\r\n"
    ).encode()
    line = f"message {i} body text ".encode() * 3 + b"\r\n"
    body = (line * (SIZE // len(line) + 1))[: SIZE - len(head) - 2] + b"\r\n"
    raw = head + body
    assert len(raw) == SIZE
    return raw


def deliver(dovecot: Dovecot, user: MailUser, count: int, folder: str = "INBOX") -> None:
    for i in range(count):
        dovecot.deliver(user, message(i), folder=folder, flags=["\\Seen"] if i % 2 else [])


def plain(port: int, timeout: float = 15.0) -> ImapSettings:
    return ImapSettings(
        Endpoint("localhost", port, Security.PLAIN),
        allow_plaintext=True, allow_private_hosts=True, timeout=timeout,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def imap_session(settings: ImapSettings, user: MailUser) -> AsyncIterator[ImapSession]:
    """Opened and closed like the account loop does it (logout in finally, even if broken)."""
    conn = await ImapConnection.open(settings)
    try:
        await conn.login(PasswordLogin(user.name, user.password))
        session = ImapSession(conn)
        await session.enable_extensions()
        yield session
    finally:
        await conn.logout()


@pytest.fixture
async def imap_proxy(dovecot: Dovecot) -> AsyncIterator[FaultProxy]:
    async with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        yield proxy


@pytest.fixture
def proxied(linked: Linked, imap_proxy: FaultProxy) -> Linked:
    """The linked account, but its sync talks to Dovecot through the proxy."""
    return dataclasses.replace(linked, imap=plain(imap_proxy.port))


async def converge(
    pool: Pool, dovecot: Dovecot, linked: Linked, ca: LocalCA, settings: ImapSettings
) -> None:
    """A fault-free pass, then the store must equal the server."""
    async with imap_session(settings, linked.user) as session:
        await linked.sync(pool, batch=4).sync_all(session)
    async with pool.acquire() as conn:
        await assert_converged(
            conn,
            dovecot,
            linked.user,
            linked.account_id,
            str(ca.ca_file),  # type: ignore[arg-type]
        )


async def inbox_rows(pool: Pool, linked: Linked) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.account_id = $1 AND f.path = 'INBOX'",
            linked.account_id,
        )
    return count


# -- a disconnect inside a FETCH literal ----------------------------------------------------


@pytest.mark.parametrize("offset", [0, SIZE // 2, SIZE - 1], ids=["first", "middle", "last"])
async def test_disconnect_inside_a_fetch_literal(
    db_pool: Pool, dovecot: Dovecot, proxied: Linked, imap_proxy: FaultProxy,
    test_ca: LocalCA, offset: int,
) -> None:  # fmt: skip
    """The connection dies at the first, middle or last byte of the third literal of a
    batch: the pass fails with ConnectionLost (transient), the batch is not half-stored,
    and the next pass converges."""
    deliver(dovecot, proxied.user, 6)
    rule = imap_proxy.add(
        Rule(DOWN, "cut", marker=b"BODY[] {", occurrence=3, skip_line=True, after=offset)
    )
    with pytest.raises(ConnectionLost, match=r"closed the connection|connection lost") as failed:
        async with imap_session(proxied.imap, proxied.user) as session:
            await proxied.sync(db_pool, batch=4).sync_all(session)
    assert isinstance(failed.value, TransientError)
    assert rule.fired == 1
    assert await inbox_rows(db_pool, proxied) == 0  # the cut batch was not committed in part
    await converge(db_pool, dovecot, proxied, test_ca, proxied.imap)
    assert await inbox_rows(db_pool, proxied) == 6
    assert imap_proxy.open_connections == 0


async def test_disconnect_in_the_next_batch_while_the_previous_one_commits(
    db_pool: Pool, dovecot: Dovecot, proxied: Linked, imap_proxy: FaultProxy, test_ca: LocalCA
) -> None:
    """The driver fetches batch k+1 while batch k commits; a cut inside batch k+1 lets
    batch k's commit finish (whole, byte-exact), so a flaky link still makes progress."""
    deliver(dovecot, proxied.user, 6)  # batches of 4, newest first: UIDs 3-6, then 1-2
    imap_proxy.add(
        Rule(DOWN, "cut", marker=b"BODY[] {", occurrence=5, skip_line=True, after=SIZE // 2)
    )
    with pytest.raises(ConnectionLost):
        async with imap_session(proxied.imap, proxied.user) as session:
            await proxied.sync(db_pool, batch=4).sync_all(session)
    async with db_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT m.uid, m.size FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.account_id = $1 AND f.path = 'INBOX'",
            proxied.account_id,
        )
    assert sorted(r["uid"] for r in rows) == [3, 4, 5, 6]
    assert all(r["size"] == SIZE for r in rows)
    await converge(db_pool, dovecot, proxied, test_ca, proxied.imap)


# -- a trickling server --------------------------------------------------------------------


async def test_a_server_trickling_a_few_bytes_at_a_time(
    db_pool: Pool, dovecot: Dovecot, proxied: Linked, imap_proxy: FaultProxy, test_ca: LocalCA
) -> None:
    """Every response arrives in 3-byte writes (CRLFs, ``{4000}`` and literals split across
    reads): slow, but the pass is byte-exact."""
    deliver(dovecot, proxied.user, 4)
    imap_proxy.add(Rule(DOWN, "delay", seconds=0.0, piece=3))
    await converge(db_pool, dovecot, proxied, test_ca, proxied.imap)
    assert await inbox_rows(db_pool, proxied) == 4


# -- a stall past the read timeout ----------------------------------------------------------


async def test_stall_past_the_read_timeout_fires_and_leaks_no_connections(
    dovecot: Dovecot, mail_user: MailUser, imap_proxy: FaultProxy
) -> None:
    """The server stops answering in the middle of a FETCH: the timeout fires in bounded
    time and, over 100 such failures, neither the proxy's open connections nor this
    process's file descriptors grow."""
    deliver(dovecot, mail_user, 2)
    timeout = 1.0
    imap_proxy.add(Rule(DOWN, "stall", marker=b"BODY.PEEK[]", watch=UP, times=None))
    settings = plain(imap_proxy.port, timeout=timeout)
    loop = asyncio.get_running_loop()

    async def one() -> float:
        async with imap_session(settings, mail_user) as session:
            await session.select("INBOX")
            started = loop.time()
            with pytest.raises(ConnectionLost, match=r"timed out|read timeout"):
                await session.fetch_messages([1, 2])
            assert session.conn.closed
            return loop.time() - started

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    fds_per_wave: list[int] = []
    elapsed: list[float] = []
    for _wave in range(4):  # 4 x 25 concurrent sessions: 100 timeouts in ~5 s
        elapsed += await asyncio.gather(*(one() for _ in range(25)))
        async with asyncio.timeout(10):
            while imap_proxy.open_connections:
                await asyncio.sleep(0.02)
        fds_per_wave.append(fds())
    assert len(elapsed) == 100
    assert all(timeout * 0.9 <= t <= timeout + 5.0 for t in elapsed), sorted(elapsed)[-3:]
    assert imap_proxy.total_connections == 100
    assert fds_per_wave[-1] <= fds_per_wave[0] + 3, fds_per_wave


# -- repeated drops of a healthy connection --------------------------------------------------


async def test_each_drop_of_a_healthy_connection_reconnects_as_fast_as_the_first(
    db_pool: Pool, dovecot: Dovecot, mail_user: MailUser, keyring: KeyRing, test_ca: LocalCA,
    imap_proxy: FaultProxy,
) -> None:  # fmt: skip
    """A connection that synced fine and then dropped is a new outage, not the next failure
    of the same one: the retry delay starts over. (The backoff here makes any second
    attempt wait up to 60 s, so a runner that kept counting would miss the deadline.)"""
    policy = ConnectionPolicy(
        ca_files=(test_ca.ca_file,), allow_private_hosts=True, allow_plaintext=True, timeout=15
    )
    deliver(dovecot, mail_user, 2)
    linked = await link(
        db_pool,
        LinkRequest(
            email=f"{mail_user.name}@example.test", password=mail_user.password,
            username=mail_user.name, smtp=None,
            imap=Endpoint("localhost", imap_proxy.port, Security.PLAIN),
        ),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    lease = BucketLease(BucketNo(linked.bucket), "w", Epoch(1))
    async with db_pool.acquire() as conn:
        await claims.claim(conn, lease)
        record = await accounts.get(conn, account_id=AccountId(linked.account_id))
    assert record is not None
    runner = AccountRunner(
        pool=db_pool, lease=lease, record=record, keyring=keyring, policy=policy,
        tuning=SyncTuning(poll_interval=30),
        backoff=Backoff(initial=0.001, factor=100_000.0, maximum=60.0),
    )  # fmt: skip
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    try:
        for drop in range(3):
            async with asyncio.timeout(10):
                while runner.sync is None or not runner.sync.rounds:
                    await asyncio.sleep(0.02)
            synced = runner.sync
            cut_at = loop.time()
            imap_proxy.cut_all()
            async with asyncio.timeout(10):  # ConnectionLost asks for 2 s; a counting runner
                while runner.sync is synced or not runner.sync.rounds:  # waits up to 60 s
                    await asyncio.sleep(0.02)
            assert loop.time() - cut_at < 6.0, drop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert imap_proxy.total_connections >= 4 + 1  # linking, then one per (re)connect


# -- unsolicited responses in the middle of a FETCH -----------------------------------------

INJECTED = {
    "exists": b"* 9 EXISTS\r\n",
    "expunge": b"* 1 EXPUNGE\r\n",
    "alert": b"* OK [ALERT] Server going down for maintenance in 5 minutes\r\n",
    "flags": b"* 2 FETCH (FLAGS (\\Flagged))\r\n",
}


@pytest.mark.parametrize("kind", list(INJECTED))
async def test_unsolicited_responses_inside_a_fetch(
    db_pool: Pool, dovecot: Dovecot, proxied: Linked, imap_proxy: FaultProxy,
    test_ca: LocalCA, kind: str,
) -> None:  # fmt: skip
    """Lines the server may send at any time, injected right after the second message of a
    FETCH batch: the pass neither crashes nor stores anything wrong; mailbox events are kept
    for the account loop (they buy a full round) instead of being dropped."""
    deliver(dovecot, proxied.user, 6)
    rule = imap_proxy.add(
        Rule(DOWN, "inject", marker=b" FETCH (", occurrence=2, at_boundary=True,
             data=INJECTED[kind])
    )  # fmt: skip
    async with imap_session(proxied.imap, proxied.user) as session:
        await proxied.sync(db_pool, batch=4).sync_all(session)
        kept = list(session.conn.unsolicited)
    assert rule.fired == 1
    if kind in ("exists", "expunge"):
        assert any(isinstance(r, wire.DataResponse) and r.kind == kind.upper() for r in kept)
    async with db_pool.acquire() as conn:
        await assert_converged(
            conn,
            dovecot,
            proxied.user,
            proxied.account_id,
            str(test_ca.ca_file),  # type: ignore[arg-type]
        )
    await converge(db_pool, dovecot, proxied, test_ca, proxied.imap)


# -- an expunge between SEARCH and FETCH ----------------------------------------------------


@pytest.mark.parametrize("phase", ["initial", "new mail"])
async def test_expunge_between_search_and_fetch(
    db_pool: Pool, dovecot: Dovecot, proxied: Linked, imap_proxy: FaultProxy,
    test_ca: LocalCA, phase: str,
) -> None:  # fmt: skip
    """The FETCH for UIDs the SEARCH just found is held in the proxy while another client
    expunges some of them; then it goes on. The pass completes (or fails transiently) and
    the folder converges: the expunged messages are not stored, nothing else is missing."""
    user = proxied.user
    sync = proxied.sync(db_pool, batch=4)
    if phase == "new mail":
        deliver(dovecot, user, 3)
        async with imap_session(proxied.imap, user) as session:
            await sync.sync_all(session)
        for i in range(3, 9):
            dovecot.deliver(user, message(i))
        doomed = ["5", "8"]
    else:
        deliver(dovecot, user, 8)
        doomed = ["2", "6"]  # one in each batch (batches go newest first)
    rule = imap_proxy.add(Rule(UP, "stall", marker=b"BODY.PEEK[]"))
    async with imap_session(proxied.imap, user) as session:
        running = asyncio.create_task(sync.sync_all(session))
        try:
            async with asyncio.timeout(20):
                await rule.triggered.wait()
            for uid in doomed:
                await asyncio.to_thread(
                    dovecot.doveadm, "expunge", "-u", user.name, "mailbox", "INBOX", "uid", uid
                )
        finally:
            rule.release()
        try:
            await running
            completed = True
        except TransientError:
            completed = False  # allowed: the server may drop the session; the loop retries
    if completed:  # then it stored exactly the survivors already, without another pass
        async with db_pool.acquire() as conn:
            await assert_converged(
                conn,
                dovecot,
                user,
                proxied.account_id,
                str(test_ca.ca_file),  # type: ignore[arg-type]
            )
    await converge(db_pool, dovecot, proxied, test_ca, proxied.imap)
    async with db_pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT m.uid FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.account_id = $1 AND f.path = 'INBOX' AND m.expunged_at IS NULL",
            proxied.account_id,
        )
    assert {r["uid"] for r in stored}.isdisjoint(int(u) for u in doomed)
    assert len(stored) == (9 if phase == "new mail" else 8) - len(doomed)


# -- SMTP: the line is cut in the middle of DATA --------------------------------------------


@pytest.fixture
async def smtp_proxy(smtp_server: SmtpServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy((smtp_server.host, smtp_server.port)) as proxy:
        yield proxy


async def test_smtp_cut_in_the_middle_of_data_sends_exactly_once(
    db_pool: Pool, db_dsn: str, dovecot: Dovecot, smtp_server: SmtpServer,
    smtp_proxy: FaultProxy, mail_user: MailUser, keyring: KeyRing, policy: ConnectionPolicy,
    test_ca: LocalCA,
) -> None:  # fmt: skip
    """Unlike the drop *after* DATA (test_sending: the server has the message), here the
    server never gets the final dot: no message exists anywhere. The outcome is unknown to
    mailish, which looks in Sent, finds nothing, and reports the unknown outcome to the user
    rather than risk a second copy (at most once: see the Sender)."""
    smtp_server.add_user(mail_user.name, mail_user.password)
    linked = await link(
        db_pool,
        LinkRequest(
            email=f"{mail_user.name}@example.test", password=mail_user.password,
            username=mail_user.name,
            imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS),
            smtp=Endpoint("localhost", smtp_proxy.port, Security.STARTTLS),
        ),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    linking_sessions = smtp_proxy.total_connections  # link proved the login through the proxy
    # The message is ~300 KB and everything before DATA is a few KB (TLS included): a cut
    # after 150 KB from the client lands inside the message.
    cut = smtp_proxy.add(Rule(UP, "cut", after=150_000))
    worker = Worker(
        pool=db_pool, assigner=StaticAssigner(buckets=4, owner="w", epoch=Epoch(2)),
        keyring=keyring, policy=policy,
        tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=30)),
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        async with (
            serve(db_dsn, keyring, test_ca) as api,
            httpx.AsyncClient(
                base_url=api.base, headers={"Authorization": f"Bearer {linked.token}"},
                timeout=30,
            ) as client,
        ):  # fmt: skip
            text = "".join(f"line {n}: nothing to see here\n" for n in range(10_000))
            answer = await client.post(
                "/v1/send", json={"to": ["friend@example.org"], "subject": "cut", "text": text},
                headers={"Idempotency-Key": "cut-in-data"},
            )  # fmt: skip
            assert answer.status_code == 202, answer.text
            op = answer.json()["operation_id"]
            async with asyncio.timeout(40):
                while (body := (await client.get(f"/v1/outbox/{op}")).json())["status"] in (
                    "queued", "sending",
                ):  # fmt: skip
                    await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        smtp_server.remove_user(mail_user.name)
    assert body["status"] == "failed" and "unknown" in str(body["error"]), body
    assert cut.fired == 1
    sessions = smtp_proxy.stats()[linking_sessions:]
    assert sessions[0].up_bytes >= 150_000  # the first session really was cut inside DATA
    received = smtp_server.received_by(mail_user.name)
    assert len(sessions) == 1  # not sent again
    assert received == []  # the server never saw the final dot
    copies = dovecot.doveadm("search", "-u", mail_user.name, "mailbox", "Sent", "SUBJECT", "cut")
    assert copies.split() == []  # and no Sent copy claims it went out
