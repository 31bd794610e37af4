"""Numbered crash points: a real ``mailish worker`` SIGKILLs itself at each point, a second one
takes over, and the mailbox converges to exactly what an uninterrupted run gives.

Every test prepares the same account: messages with flags in four folders, synced once, then
queued operations (two flag changes, a move, an expunge in Trash, a folder create), a queued
send, and changes on the server (new mail, a flag, an expunge, a new UIDVALIDITY) so that one
round of the worker passes every point in ``mailish.observability.crashpoints.POINTS``.
Convergence: each folder's UID → (sha256, flags) equals the server's, no duplicate rows,
nothing pending, the store (modulo ids and timestamps) and the server equal the reference run,
and the SMTP server got the message at most once.

Two points sit in the window where only the SMTP server knows whether it took the message
(after the row was marked in doubt, right before DATA, and after the 250 before anything was
recorded). There mailish never sends again: with a provider that files its own Sent copy the
copy settles the send; without one the send ends ``failed`` ("outcome unknown") instead of
going out twice. ``test_provider_sent_copy_settles_a_crash_after_data`` covers the first case.

The default run covers a representative subset (~45 s); ``-m slow`` adds every other point
(about 7 s each: most of it is two worker start-ups, whose audit starts accounts every 2 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import ConfigError
from mailish.domain.ids import BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing, format_key, new_key
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.observability import crashpoints
from mailish.services.linking import LinkRequest, link
from mailish.store import claims, connecting, local_changes, outbox
from mailish.worker.account_sync import AccountSync
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.mailboxes import Snapshot, local_snapshot, server_snapshot
from tests.harness.pg_fixtures import PgServer
from tests.harness.smtp import Received, SmtpServer

MAILISH = [sys.executable, "-m", "mailish"]
SOURCE = Path(__file__).resolve().parents[2] / "mailish"
BUCKETS = 4
OUTGOING_ID = "<outgoing-1@crash.test>"
#: Points where the server may or may not have the message when the worker dies.
IN_DOUBT = {"send.in_doubt": 0, "send.accepted": 1}  # point -> messages the server received
#: The default run's subset (a point costs ~7 s, mostly two worker start-ups): the sync
#: path, the move that once left a duplicate, and the three send windows.
DEFAULT_POINTS = {"sync.fetched", "ops.moved", "send.claimed", "send.accepted", "send.filed"}
MESSAGES = {
    "INBOX": [("\\Seen",), ("\\Seen",), (), ("\\Seen",), ()],
    "Archive": [(), ("\\Seen",)],
    "Trash": [("\\Seen",)],
    "Lists": [(), ("\\Seen",), ()],
}


def raw_message(folder: str, n: int, *, to: str = "me@example.test") -> bytes:
    return (
        f"From: Sender {n} <sender{n}@example.org>\r\nTo: {to}\r\n"
        f"Subject: {folder} message {n}\r\nMessage-ID: <{folder.lower()}-{n}@crash.test>\r\n"
        f"Date: Mon, 1 Jun 2026 10:{n:02d}:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nBody {n} of {folder}.\r\n"
    ).encode()


OUTGOING = (
    f"From: Me <me@example.test>\r\nTo: friend@example.org\r\nSubject: crash-safe send\r\n"
    f"Message-ID: {OUTGOING_ID}\r\nDate: Mon, 1 Jun 2026 11:00:00 +0000\r\n"
    f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSent once.\r\n"
).encode()


@dataclass
class Mailbox:
    """One prepared account: its database, Dovecot user and the environment of its worker."""

    dsn: str
    user: MailUser
    account_id: UUID
    env: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    server: Snapshot
    store: dict[str, Any]
    received: int
    stderr: str


def every_point_call(source: Path = SOURCE) -> dict[str, list[str]]:
    """point name → files that call ``crash_point("<name>")``."""
    calls: dict[str, list[str]] = {}
    for path in sorted(source.rglob("*.py")):
        for name in re.findall(r'crash_point\(\s*"([^"]+)"\s*\)', path.read_text()):
            calls.setdefault(name, []).append(str(path.relative_to(source)))
    return calls


def test_every_registered_point_is_placed_and_every_placed_point_registered() -> None:
    calls = every_point_call()
    assert set(calls) == set(crashpoints.POINTS), (
        set(calls) ^ set(crashpoints.POINTS),
        "crash_point() names and crashpoints.POINTS must match",
    )
    assert all(len(files) == 1 for files in calls.values()), calls  # one place per number
    assert 12 <= len(crashpoints.POINTS) <= 25
    assert set(crashpoints.POINTS) >= DEFAULT_POINTS | set(IN_DOUBT)


def test_arming_needs_both_variables_outside_kubernetes() -> None:
    try:
        at, enable = crashpoints.CRASH_AT, crashpoints.CRASH_ENABLE
        assert crashpoints.arm_from_environment({}) is None
        assert crashpoints.arm_from_environment({at: "sync.listed"}) is None
        assert crashpoints.arm_from_environment({enable: "1"}) is None
        pod = {at: "sync.listed", enable: "1", "POD_NAME": "worker-0"}
        assert crashpoints.arm_from_environment(pod) is None
        crashpoints.crash_point("sync.listed")  # disarmed: returns
        with pytest.raises(ConfigError, match=r"unknown crash point 'sync\.typo'"):
            crashpoints.arm_from_environment({at: "sync.typo", enable: "1"})
        with pytest.raises(ConfigError, match="positive integer"):
            crashpoints.arm_from_environment({at: "sync.listed:0", enable: "1"})
        armed = crashpoints.arm_from_environment({at: "sync.listed:3", enable: "1"})
        assert armed == "sync.listed"
        crashpoints.crash_point("sync.mirrored")  # another point: no effect
    finally:
        crashpoints.disarm()


# -- the scenario ---------------------------------------------------------------------------


async def prepare(dsn: str, dovecot: Dovecot, smtp_server: SmtpServer, ca: LocalCA) -> Mailbox:
    """Mailbox, first sync, queued work, then server-side changes the worker has not seen."""
    user = dovecot.add_user()
    smtp_server.add_user(user.name, user.password)
    for folder, flag_sets in MESSAGES.items():
        for n, flags in enumerate(flag_sets, start=1):
            dovecot.deliver(user, raw_message(folder, n), folder=folder, flags=flags)
    key = new_key()
    keyring = KeyRing({"k1": key}, "k1")
    policy = ConnectionPolicy(ca_files=(ca.ca_file,), allow_private_hosts=True, timeout=15)
    imap = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    pool = await connecting.connect_pool(dsn, min_size=1, max_size=4)
    try:
        linked = await link(
            pool,
            LinkRequest(email=f"{user.name}@example.test", password=user.password, imap=imap,
                        smtp=Endpoint("localhost", smtp_server.port, Security.STARTTLS),
                        username=user.name),
            keyring=keyring, policy=policy, buckets=BUCKETS,
        )  # fmt: skip
        await first_sync(pool, linked.account_id, BucketNo(linked.bucket), user, imap, policy)
        await queue_work(pool, linked.account_id)
    finally:
        await pool.close()
    dovecot.deliver(user, raw_message("INBOX", 6), flags=("\\Seen",))
    dovecot.deliver(user, raw_message("INBOX", 7))
    dovecot.doveadm("flags", "add", "-u", user.name, "\\Answered", "mailbox", "INBOX", "uid", "5")
    dovecot.doveadm("expunge", "-u", user.name, "mailbox", "Archive", "uid", "1")
    dovecot.doveadm("mailbox", "update", "-u", user.name, "--uid-validity", "4242", "Lists")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
    env.update(
        MAILISH_DATABASE_URL=dsn, MAILISH_SECRET_KEYS=format_key("k1", key),
        MAILISH_TLS_CA_FILE=str(ca.ca_file), MAILISH_ALLOW_PRIVATE_HOSTS="1",
        MAILISH_BUCKETS=str(BUCKETS), MAILISH_LOG_LEVEL="WARNING", MAILISH_LOG_FORMAT="text",
        MAILISH_WORKER_AUDIT_INTERVAL="0.2",
    )  # fmt: skip
    return Mailbox(dsn, user, linked.account_id, env)


async def first_sync(
    pool: connecting.Pool, account_id: UUID, bucket: BucketNo, user: MailUser,
    imap: Endpoint, policy: ConnectionPolicy,
) -> None:  # fmt: skip
    """In-process (a worker process costs seconds to start); epoch 1, which the workers fence."""
    lease = BucketLease(bucket, "setup", Epoch(1))
    async with pool.acquire() as conn:
        await claims.claim(conn, lease)
    settings = ImapSettings(imap, ca_files=policy.ca_files, allow_private_hosts=True, timeout=15)
    login = PasswordLogin(user.name, user.password)
    conn = await ImapConnection.open(settings)
    try:
        await conn.login(login)
        session = ImapSession(conn)
        await session.enable_extensions()
        sync = AccountSync(
            pool=pool, lease=lease, account_id=account_id, imap=settings, login=login
        )
        await sync.sync_all(session)
    finally:
        await conn.logout()


MESSAGE_ID = """
SELECT m.id FROM messages m JOIN folders f ON f.id = m.folder_id
WHERE m.account_id = $1 AND f.path = $2 AND m.uid = $3
"""


async def queue_work(pool: connecting.Pool, account_id: UUID) -> None:
    """What the API would queue: each change with its operation, in one transaction each."""

    async def message(conn: asyncpg.Connection, path: str, uid: int) -> int:
        found = await conn.fetchval(MESSAGE_ID, account_id, path, uid)
        assert found is not None, (path, uid)
        return int(found)

    async with pool.acquire() as conn:
        archive = await conn.fetchval(
            "SELECT id FROM folders WHERE account_id = $1 AND path = 'Archive'", account_id
        )
        delimiter = await conn.fetchval(
            "SELECT delimiter FROM folders WHERE account_id = $1 AND path = 'INBOX'", account_id
        )
        async with conn.transaction():
            await local_changes.set_flags(
                conn, account_id=account_id, message_id=await message(conn, "INBOX", 1),
                seen=None, flagged=True,
            )  # fmt: skip
        async with conn.transaction():
            await local_changes.set_flags(
                conn, account_id=account_id, message_id=await message(conn, "INBOX", 2),
                seen=False, flagged=None,
            )  # fmt: skip
        async with conn.transaction():
            await local_changes.move(
                conn, account_id=account_id, message_id=await message(conn, "INBOX", 3),
                to_folder_id=archive,
            )  # fmt: skip
        async with conn.transaction():  # in Trash: expunged for good
            await local_changes.delete(
                conn, account_id=account_id, message_id=await message(conn, "Trash", 1)
            )
        async with conn.transaction():
            await local_changes.create_folder(
                conn, account_id=account_id, name="Projects", parent_id=None,
                default_delimiter=delimiter or "/",
            )  # fmt: skip
        async with conn.transaction():
            await outbox.enqueue(
                conn, account_id=account_id, key="crash-send", request_hash=b"crash",
                message_id=OUTGOING_ID, raw=OUTGOING, sha256=hashlib.sha256(OUTGOING).digest(),
                envelope_from="me@example.test", recipients=("friend@example.org",),
                send_at=None,
            )  # fmt: skip


# -- running workers ------------------------------------------------------------------------


def start_worker(box: Mailbox, log: Path, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(box.env)
    if crash_at is not None:
        env[crashpoints.CRASH_AT] = crash_at
        env[crashpoints.CRASH_ENABLE] = "1"
    with log.open("ab") as err:
        return subprocess.Popen([*MAILISH, "worker"], env=env, stderr=err)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


STATE_QUERIES = {
    "folders": """
        SELECT path, role, selectable, sync_phase, pending_op IS NULL AS settled, deleting
        FROM folders WHERE account_id = $1 ORDER BY path""",
    "operations": "SELECT kind, status, error FROM operations WHERE account_id = $1 ORDER BY id",
    "outbox": """
        SELECT status, accepted, refused::text, error FROM outbox WHERE account_id = $1""",
    "problems": """
        SELECT (SELECT count(*) - count(DISTINCT (folder_id, uid)) FROM messages
                WHERE account_id = $1 AND expunged_at IS NULL) AS duplicate_uids,
               (SELECT count(*) - count(DISTINCT (folder_id, stable_id)) FROM messages
                WHERE account_id = $1 AND expunged_at IS NULL) AS duplicate_messages,
               (SELECT count(*) FROM messages WHERE account_id = $1 AND expunged_at IS NULL
                AND (uid < 0 OR pending_from_folder IS NOT NULL)) AS unsettled_moves""",
}


async def store_state(conn: asyncpg.Connection, account_id: UUID) -> dict[str, Any]:
    """The store modulo ids and timestamps."""
    state: dict[str, Any] = {
        name: [tuple(r.values()) for r in await conn.fetch(query, account_id)]
        for name, query in STATE_QUERIES.items()
    }
    state["messages"] = await local_snapshot(conn, account_id)
    return state


def settled(state: dict[str, Any]) -> bool:
    return (
        all(status in ("done", "failed") for _, status, _ in state["operations"])
        and all(row[0] not in ("queued", "sending", "unknown") for row in state["outbox"])
        and all(row[3] == "synced" and row[4] for row in state["folders"] if row[2])
        and state["problems"] == [(0, 0, 0)]
    )


async def converge(box: Mailbox, dovecot: Dovecot, log: Path, limit: float = 60) -> Outcome:
    """Run a worker until the store is settled and equals the server; then stop it."""
    ca_file = box.env["MAILISH_TLS_CA_FILE"]
    proc = start_worker(box, log)
    conn = await asyncpg.connect(box.dsn)
    state: dict[str, Any] = {}
    server: Snapshot = {}
    try:
        async with asyncio.timeout(limit):
            while True:
                assert proc.poll() is None, tail(log)
                state = await store_state(conn, box.account_id)
                if settled(state):
                    server = await asyncio.to_thread(server_snapshot, dovecot, box.user, ca_file)
                    if server == state["messages"]:
                        break
                await asyncio.sleep(0.1)
    except TimeoutError:
        server = await asyncio.to_thread(server_snapshot, dovecot, box.user, ca_file)
        raise AssertionError(f"no convergence:\n{state}\nserver: {server}\n{tail(log)}") from None
    finally:
        await conn.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0, tail(log)
    return Outcome(server, state, 0, tail(log))


async def crash_then_converge(
    box: Mailbox, dovecot: Dovecot, smtp_server: SmtpServer, log: Path, point: str
) -> Outcome:
    proc = start_worker(box, log, crash_at=point)
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == -signal.SIGKILL, f"crash point {point} not reached (exit {code}):\n{tail(log)}"
    after_crash = len(sent_copies(smtp_server, box.user))
    outcome = await converge(box, dovecot, log)
    received = len(sent_copies(smtp_server, box.user))
    assert received >= after_crash
    return Outcome(outcome.server, outcome.store, received, outcome.stderr)


def sent_copies(smtp_server: SmtpServer, user: MailUser) -> list[Received]:
    return [r for r in smtp_server.received_by(user.name) if OUTGOING_ID.encode() in r.data]


@pytest.fixture(scope="module")
async def reference(
    pg_server: PgServer, dovecot: Dovecot, smtp_server: SmtpServer, test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Outcome]:  # fmt: skip
    """The same scenario without a crash: what every crashed run must end with."""
    dsn = await pg_server.fresh_database()
    try:
        box = await prepare(dsn, dovecot, smtp_server, test_ca)
        outcome = await converge(box, dovecot, tmp_path_factory.mktemp("reference") / "log")
        received = len(sent_copies(smtp_server, box.user))
        smtp_server.remove_user(box.user.name)
        yield Outcome(outcome.server, outcome.store, received, outcome.stderr)
    finally:
        await pg_server.drop_database(dsn)


def check_reference(ref: Outcome) -> None:
    """The uninterrupted run itself: everything applied, sent once, one Sent copy."""
    assert ref.received == 1
    [(status, accepted, _, error)] = ref.store["outbox"]
    assert (status, list(accepted), error) == ("sent", ["friend@example.org"], None)
    assert [s for _, s, _ in ref.store["operations"]] == ["done"] * 5
    assert len(ref.server["Sent"]) == 1
    assert "Projects" in ref.server
    assert len(ref.server["Archive"]) == 2  # one expunged on the server, one moved in
    assert ref.server["Trash"] == {}
    inbox_flags = {uid: flags for uid, (_, flags) in ref.server["INBOX"].items()}
    assert inbox_flags[1] == ("\\Flagged", "\\Seen") and inbox_flags[2] == ()
    assert 3 not in inbox_flags and "\\Answered" in inbox_flags[5] and len(inbox_flags) == 6


def without_the_send(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {path: folder for path, folder in snapshot.items() if path != "Sent"}


def point_params(points: Callable[[str], bool]) -> list[Any]:
    return [
        pytest.param(name, id=f"{k:02d}-{name}", marks=() if points(name) else pytest.mark.slow)
        for k, name in enumerate(crashpoints.POINTS, start=1)
    ]


@pytest.mark.parametrize("point", point_params(lambda name: name in DEFAULT_POINTS))
async def test_sigkill_at_crash_point_converges_to_the_uninterrupted_state(
    point: str, reference: Outcome, db_dsn: str, dovecot: Dovecot, smtp_server: SmtpServer,
    test_ca: LocalCA, tmp_path: Path,
) -> None:  # fmt: skip
    check_reference(reference)
    box = await prepare(db_dsn, dovecot, smtp_server, test_ca)
    try:
        got = await crash_then_converge(box, dovecot, smtp_server, tmp_path / "log", point)
    finally:
        smtp_server.remove_user(box.user.name)
    assert got.server == got.store["messages"]  # converged: UID → sha256 + flags per folder
    assert got.store["problems"] == [(0, 0, 0)]  # no duplicates, no half-applied moves
    assert got.store["operations"] == reference.store["operations"]
    assert got.store["folders"] == reference.store["folders"]
    if point not in IN_DOUBT:
        assert got.received == 1, f"sent {got.received} times"
        assert got.server == reference.server
        assert got.store == reference.store
        return
    # Only the SMTP server knows whether it took the message: never sent a second time.
    assert got.received == IN_DOUBT[point]
    [(status, accepted, _, error)] = got.store["outbox"]
    assert (status, list(accepted)) == ("failed", [])
    assert error.startswith("outcome unknown")
    assert got.server["Sent"] == {}
    assert without_the_send(got.server) == without_the_send(reference.server)


@pytest.mark.slow
async def test_provider_sent_copy_settles_a_crash_after_data(
    reference: Outcome, db_dsn: str, dovecot: Dovecot, smtp_server: SmtpServer,
    test_ca: LocalCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A provider that files what it accepts in Sent (Gmail, Outlook): killed after the 250,
    the successor finds the copy, records the send and appends nothing; the result equals
    the uninterrupted run."""
    box = await prepare(db_dsn, dovecot, smtp_server, test_ca)
    original = smtp_server._record

    def record_and_file(message: Received) -> int:
        if message.auth_user == box.user.name:
            dovecot.deliver(box.user, message.data, folder="Sent", flags=["\\Seen"])
        return original(message)

    monkeypatch.setattr(smtp_server, "_record", record_and_file)
    try:
        got = await crash_then_converge(
            box, dovecot, smtp_server, tmp_path / "log", "send.accepted"
        )
    finally:
        smtp_server.remove_user(box.user.name)
    assert got.received == 1
    assert got.server == got.store["messages"]
    assert got.server == reference.server
    assert got.store == reference.store
