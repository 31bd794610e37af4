"""Measuring tools for the benchmarks: child processes, server CPU, mbsync and a durable PostgreSQL.

Both sync tools run as child processes of the benchmark, so their wall time, CPU time and
peak RSS come from the same place (``wait4`` of that one child). Server-side CPU (PostgreSQL,
Dovecot) is read from /proc for the server's whole process tree, so a table can say where the
machine's time went, not just the client's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailish.store.embedded import EmbeddedPostgres

MBSYNC = "/usr/bin/mbsync"
GNU_TIME = "/usr/bin/time"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ChildRun:
    """One finished child process: what it printed and what it cost."""

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    user_s: float  # CPU of the child (and any children it waited for), user mode
    sys_s: float  # ... and kernel mode (TLS reads are user; fsync, page writes are system)
    maxrss_mb: float  # peak resident set size of the child itself
    maxrss_exact: bool  # False: the fallback, an upper bound (see run_child)
    stdout: str
    stderr: str


def run_child(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800.0,
) -> ChildRun:
    """Run ``argv`` and collect its own rusage.

    Peak RSS trap: Linux keeps a process's ``ru_maxrss`` across ``execve``, and a child forked
    from this (large) pytest process starts with the parent's resident set, so ``wait4`` of a
    direct child reports at least the benchmark's own RSS (a 7 ms mbsync "used" 35 MB).
    GNU time is small, so the tool it forks starts clean and its ``%M`` is the tool's real
    peak. Without /usr/bin/time we fall back to ``wait4``'s value and flag it as an upper bound.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file,
    ):
        exact = Path(GNU_TIME).is_file()
        full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if exact else list(argv)
        started = time.perf_counter()
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            deadline = started + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                if time.perf_counter() > deadline:
                    raise subprocess.TimeoutExpired(full, timeout)
                time.sleep(0.002)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:  # interrupted or timed out: end the whole group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_group_gone(proc.pid)
        maxrss_kb = float(usage.ru_maxrss)
        if exact:
            lines = [ln for ln in rss_file.read().splitlines() if ln.strip().isdigit()]
            if lines:
                maxrss_kb = float(lines[-1])
            else:
                exact = False
        out.seek(0)
        err.seek(0)
        return ChildRun(
            argv=tuple(argv),
            returncode=proc.returncode,
            wall_s=wall,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            maxrss_mb=maxrss_kb / 1024,
            maxrss_exact=exact,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def _wait_group_gone(pgid: int, limit: float = 5.0) -> None:
    """Until no process of group ``pgid`` is left (so its files stop changing)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_s(root_pid: int | None) -> float:
    """CPU seconds used so far by ``root_pid`` and its descendants.

    Live processes count their own utime+stime; exited children count through their parent's
    cutime+cstime once reaped (the PostgreSQL postmaster and the Dovecot master both reap at
    once), so the difference of two readings is what the server spent in between.
    """
    if root_pid is None:
        return 0.0
    parents: dict[int, int] = {}
    own: dict[int, float] = {}
    reaped: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14-17
        parents[pid] = int(fields[1])
        own[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
        reaped[pid] = (int(fields[13]) + int(fields[14])) / _TICKS
    if root_pid not in own:
        return 0.0
    total = own[root_pid] + reaped[root_pid]
    frontier = [root_pid]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                total += own[pid] + reaped[pid]
                frontier.append(pid)
    return total


def knob(name: str, default: int) -> int:
    """A benchmark setting from ``MAILISH_BENCH_<name>``."""
    return int(os.environ.get(f"MAILISH_BENCH_{name}", default))


def count_maildir(folder: Path) -> int:
    return sum(1 for sub in ("cur", "new") for _ in (folder / sub).iterdir())


def flush_dirty_pages() -> None:
    """Flush dirty pages left by the previous round, so it does not bill the next one."""
    os.sync()


# --- mbsync ---------------------------------------------------------------------------------


def mbsync_version() -> str:
    done = subprocess.run([MBSYNC, "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write_mbsyncrc(
    folder: Path, *, port: int, user: str, password: str, ca_file: Path, maildir: Path
) -> Path:
    """An isync 1.4.4 config that pulls INBOX into a fresh Maildir, fsync on.

    isync 1.4 has no ``UseCompression`` option: it uses COMPRESS=DEFLATE whenever the server
    offers it, and the switch is ``DisableExtension COMPRESS=DEFLATE`` (missing from 1.4.4's
    man page; plain ``COMPRESS`` is rejected as an unknown extension). The harness's Dovecot
    does not load imap_zlib anyway (``compress=False``), so COMPRESS is off on both ends.
    ``Far``/``Near`` are the 1.4 spellings (``Master``/``Slave`` are deprecated aliases).
    ``SyncState *`` keeps the state inside the fresh Maildir; the default (~/.mbsync/) is
    keyed by store names only, so a second round would find the first round's state and stop
    with "UIDVALIDITY of both far side INBOX and near side INBOX changed".
    """
    maildir.mkdir(parents=True, exist_ok=True)
    rc = folder / "mbsyncrc"
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    rc.write_text(
        f"""FSync yes

IMAPAccount bench
Host localhost
Port {port}
User {user}
Pass "{quoted}"
SSLType IMAPS
SystemCertificates no
CertificateFile {ca_file}
DisableExtension COMPRESS=DEFLATE
Timeout 120

IMAPStore remote
Account bench

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX

Channel inbox
Far :remote:INBOX
Near :local:INBOX
Sync Pull
Create Near
SyncState *
"""
    )
    rc.chmod(0o600)
    return rc


# --- PostgreSQL -----------------------------------------------------------------------------


class DurablePostgres:
    """mailish's embedded PostgreSQL with fsync ON, on the normal disk (not tmpfs)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailish-bench-pg-", dir="/tmp"))
        self.root.chmod(0o755)  # as root the server runs as 'postgres' and must reach it
        self.embedded = EmbeddedPostgres(self.root, durable=True, database="postgres")
        self.admin_dsn = ""

    def start(self) -> str:
        self.admin_dsn = self.embedded.start()
        return self.admin_dsn

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.embedded.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self.embedded.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A folder on the normal disk under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
