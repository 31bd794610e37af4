"""The scale benchmark's moving parts: accounts seeded in the store, a real worker process,
and what it costs (RSS, CPU, IMAP connections), plus delivery-to-PostgreSQL timing.

Shared by ``bench/scale.py`` (500-2,000 accounts) and the 50-account smoke test in
``tests/e2e/test_scale_smoke.py``, so the benchmark's plumbing runs in every CI build.

The worker is ``python -m mailish worker``, exactly as deployed (no pod: it owns every bucket
at a fresh epoch). Accounts are inserted straight into the store with sealed credentials,
as ``linking.link`` stores them, without its IMAP/SMTP login check (which would cost one
extra login per account and say nothing about the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from mailish.domain.buckets import bucket_for
from mailish.domain.ids import AccountId, new_account_id
from mailish.mail.credentials import KeyRing, format_key, new_key
from mailish.store import accounts
from mailish.store.connecting import Conn
from tests.harness.dovecot import SPECIAL_USE_FOLDERS, Dovecot, MailUser

BUCKETS = 64  # the production default (MAILISH_BUCKETS)
_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def ensure_inotify_instances(wanted: int) -> str:
    """Raise the per-uid inotify instance limit so every Dovecot imap process gets one.

    All mail processes run as one uid (nobody), and Linux's default of 128 instances per uid
    is used up at ~128 connections: Dovecot then logs "Inotify instance limit ... exceeded,
    disabling" and falls back to checking mailboxes every 30 s (mailbox_idle_check_interval),
    so NOTIFY/IDLE deliveries took 10-30 s in the first 500-account run. Returns a note for
    the report (the limit in force, or why it could not be raised).
    """
    try:
        current = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        return "inotify limit unknown"
    if current >= wanted:
        return f"fs.inotify.max_user_instances = {current}"
    try:
        INOTIFY_INSTANCES.write_text(str(wanted))
    except OSError as exc:
        return (
            f"fs.inotify.max_user_instances = {current} (could not raise it to {wanted}: {exc}); "
            "Dovecot polls mailboxes every 30 s beyond that many connections"
        )
    return f"fs.inotify.max_user_instances raised {current} -> {wanted}"


def make_users(
    dovecot: Dovecot, count: int, *, messages: int = 3, prefix: str = "scale"
) -> list[MailUser]:
    """``count`` Dovecot users named <prefix>00000..., each INBOX holding ``messages`` mails."""
    users = []
    for i in range(count):
        user = dovecot.add_user(f"{prefix}{i:05d}")
        dovecot.load_maildir(user, messages, seed=i)
        _make_special_folders(dovecot, user)
        users.append(user)
    _index_mailboxes(dovecot, users)
    return users


def _index_mailboxes(dovecot: Dovecot, users: Sequence[MailUser]) -> None:
    """Let Dovecot build each mailbox's index now (one doveadm run for all users): the first
    IMAP open of a never-indexed Maildir writes the index, which NOTIFY then reports as a
    change of every folder, and every account would run its first round twice."""
    listing = users[0].home.parent / f"users-{len(users)}.txt"
    listing.write_text("".join(f"{u.name}\n" for u in users))
    dovecot.doveadm("mailbox", "status", "-F", str(listing), "messages", "*", timeout=600)
    listing.unlink()


def _make_special_folders(dovecot: Dovecot, user: MailUser) -> None:
    """Create Dovecot's auto-created special-use folders up front (Maildir++ ``.Name``), as
    an existing account has them. Otherwise Dovecot creates them at the worker's first LIST,
    NOTIFY reports five new mailboxes, and every account's first round is followed by a
    second, re-listing one: a start-up cost a real mailbox does not have."""
    for name in SPECIAL_USE_FOLDERS:
        for sub in ("", "cur", "new", "tmp"):
            path = user.maildir / f".{name}" / sub
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, dovecot.mail_uid, dovecot.mail_gid)


def new_keyring() -> tuple[KeyRing, str]:
    key = new_key()
    return KeyRing({"k1": key}, "k1"), format_key("k1", key)


async def seed_accounts(
    conn: Conn, users: Sequence[MailUser], *, keyring: KeyRing, imaps_port: int
) -> dict[str, AccountId]:
    """One active password account per user (implicit TLS to localhost), in one transaction."""
    ids: dict[str, AccountId] = {}
    settings = {"imap": {"host": "localhost", "port": imaps_port, "security": "tls"}}
    async with conn.transaction():
        for user in users:
            account_id = new_account_id()
            sealed = keyring.encrypt(account_id, {"password": user.password, "username": user.name})
            await accounts.create(
                conn, account_id=account_id, email=f"{user.name}@example.test",
                display_name=None, bucket=bucket_for(account_id, BUCKETS), provider=None,
                settings=settings, auth_kind="password", credentials=sealed, key_id=keyring.primary,
            )  # fmt: skip
            ids[user.name] = account_id
    return ids


async def count_online(conn: Conn, *, since: dt.datetime | None = None) -> int:
    """Accounts whose loop finished its first round and went back to waiting (IDLE/NOTIFY);
    with ``since``, a round finished at or after it (by a worker started then)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE sync_state = 'idle'"
            " AND ($1::timestamptz IS NULL OR last_sync_at >= $1)",
            since,
        )
    )


async def wait_online(
    conn: Conn, expected: int, *, limit: float, since: dt.datetime | None = None
) -> float:
    """Seconds until ``expected`` accounts are idle; raises with the count reached if not."""
    started = time.monotonic()
    online = 0
    while time.monotonic() - started < limit:
        online = await count_online(conn, since=since)
        if online >= expected:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    errors = await conn.fetch(
        "SELECT sync_state, status, last_error, count(*) AS n FROM accounts "
        "WHERE sync_state IS DISTINCT FROM 'idle' GROUP BY 1, 2, 3 ORDER BY n DESC LIMIT 5"
    )
    raise AssertionError(
        f"{online} of {expected} accounts online after {limit:.0f} s; others: "
        + "; ".join(f"{r['n']}x {r['sync_state']}/{r['status']}: {r['last_error']}" for r in errors)
    )


# --- the worker process -------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One reading of a process: resident set, its peak, CPU seconds so far."""

    rss_kb: int
    hwm_kb: int
    cpu_s: float


class WorkerProcess:
    """``python -m mailish worker`` against ``dsn``, logging to ``log_path``."""

    def __init__(
        self,
        *,
        dsn: str,
        secret_keys: str,
        ca_file: Path,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        profile: Path | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
        for name in ("POD_NAME", "KUBERNETES_SERVICE_HOST"):
            env.pop(name, None)
        env.update(
            MAILISH_DATABASE_URL=dsn, MAILISH_SECRET_KEYS=secret_keys,
            MAILISH_TLS_CA_FILE=str(ca_file), MAILISH_ALLOW_PRIVATE_HOSTS="1",
            MAILISH_BUCKETS=str(BUCKETS), MAILISH_LOG_LEVEL="WARNING", MAILISH_LOG_FORMAT="text",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        )  # fmt: skip
        env.update(extra_env or {})
        self.env = env
        self.profile = profile  # cProfile stats of the whole run, written when it stops
        self.workdir = workdir  # its own cwd: no developer's .env is picked up
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self._profiler(), "-m", "mailish", "worker"], env=self.env,
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        return self.proc.pid

    def _profiler(self) -> list[str]:
        return [] if self.profile is None else ["-m", "cProfile", "-o", str(self.profile)]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")

    def usage(self) -> Usage:
        return read_usage(self.pid)

    def imap_connections(self, port: int) -> int:
        """The worker's established TCP connections to ``port`` (its IMAP sessions)."""
        conns = psutil.Process(self.pid).net_connections(kind="tcp")
        return sum(
            1
            for c in conns
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr[1] == port
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as when its node dies: no goodbye to IMAP servers or PostgreSQL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL of the process group after ``timeout``; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode


def read_usage(pid: int) -> Usage:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    parts = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(parts[11]) + int(parts[12])) / _TICKS
    return Usage(
        rss_kb=int(fields["VmRSS"].split()[0]), hwm_kb=int(fields["VmHWM"].split()[0]), cpu_s=cpu
    )


async def wait_claimed(conn: Conn, *, limit: float, worker: WorkerProcess) -> None:
    """Until the worker holds every bucket (its assigner ran and it is ready for accounts)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        worker.check_alive()
        if await conn.fetchval("SELECT count(*) FROM bucket_claims") >= BUCKETS:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker did not claim its buckets in {limit} s:\n{worker.log_tail()}")


async def take_over(
    conn: Conn, worker: WorkerProcess, n: int, *, limit: float
) -> tuple[float, float]:
    """Failover: SIGKILL ``worker`` (its node died) and start a successor on the same
    database, which claims every bucket at a newer epoch and runs a full round on each of the
    N accounts (each already synced, so mostly LIST-STATUS and SELECT QRESYNC). Returns the
    seconds from the successor's start until every account finished that round (imports and
    claiming included) and its CPU seconds. ``worker`` is left running the successor."""
    worker.kill()
    since = await conn.fetchval("SELECT now()")
    worker.start()
    took = await wait_online(conn, n, limit=limit, since=since)
    return took, worker.usage().cpu_s


# --- delivery latency ---------------------------------------------------------------------


@dataclass
class Delivery:
    user: str
    folder_id: int
    uid: int = 0
    appended_at: float = 0.0  # monotonic, when APPEND returned
    seen_after: float | None = None  # seconds until the row was visible in PostgreSQL


async def inbox_ids(conn: Conn, account_ids: dict[str, AccountId]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT account_id, id FROM folders WHERE path = 'INBOX' AND account_id = ANY($1::uuid[])",
        list(account_ids.values()),
    )
    by_account = {r["account_id"]: int(r["id"]) for r in rows}
    return {name: by_account[uuid.UUID(str(aid))] for name, aid in account_ids.items()}


def delivery_message(n: int) -> bytes:
    return (
        f"From: Sender <sender@example.org>\r\nTo: scale@example.test\r\n"
        f"Subject: scale delivery {n}\r\nMessage-ID: <scale{n}.{os.getpid()}@example.org>\r\n"
        f"Date: Fri, 04 Dec 2026 00:00:00 +0000\r\n\r\nhello {n}\r\n"
    ).encode()


async def deliver_and_time(
    conn: Conn,
    dovecot: Dovecot,
    targets: Sequence[str],
    inboxes: dict[str, int],
    *,
    rate: float,
    limit: float,
    poll: float = 0.01,
) -> list[Delivery]:
    """APPEND one message per entry of ``targets`` (user names) at ``rate`` per second, from
    a thread, while this loop polls PostgreSQL for each message's row every ``poll`` s."""
    deliveries = [Delivery(user=name, folder_id=inboxes[name]) for name in targets]
    appended: list[Delivery] = []
    lock = threading.Lock()

    def append_all() -> None:
        started = time.monotonic()
        for n, item in enumerate(deliveries):
            pause = started + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            item.uid = dovecot.deliver(item.user, delivery_message(n))
            item.appended_at = time.monotonic()
            with lock:
                appended.append(item)

    appender = asyncio.ensure_future(asyncio.to_thread(append_all))
    waiting: list[Delivery] = []
    last_append = time.monotonic()
    while True:
        with lock:
            waiting += appended
            appended.clear()
        if appender.done():
            appender.result()  # a failed APPEND surfaces here
            if not waiting:
                break
        else:
            last_append = time.monotonic()
        if waiting:
            found = await conn.fetch(
                "SELECT m.folder_id, m.uid FROM messages m JOIN unnest($1::bigint[], $2::bigint[]) "
                "AS w(folder_id, uid) ON m.folder_id = w.folder_id AND m.uid = w.uid",
                [d.folder_id for d in waiting], [d.uid for d in waiting],
            )  # fmt: skip
            now = time.monotonic()
            seen = {(int(r["folder_id"]), int(r["uid"])) for r in found}
            for item in waiting:
                if (item.folder_id, item.uid) in seen:
                    item.seen_after = now - item.appended_at
            waiting = [d for d in waiting if d.seen_after is None]
            if waiting and now - last_append > limit:
                break  # these never arrived: reported as missing
        await asyncio.sleep(poll)
    return deliveries


def random_targets(names: Sequence[str], count: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    return [rnd.choice(names) for _ in range(count)]
