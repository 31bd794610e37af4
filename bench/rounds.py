"""One round of each tool against the same Dovecot user, under the same conditions."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    MBSYNC,
    DurablePostgres,
    count_maildir,
    flush_dirty_pages,
    run_child,
    scratch_folder,
    tree_cpu_s,
    write_mbsyncrc,
)
from bench.report import Report, SyncRow
from mailish.store import connecting
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Bench:
    dovecot: Dovecot
    ca: LocalCA
    pg: DurablePostgres
    user: MailUser
    messages: int
    mailbox_bytes: int
    report: Report
    exact_rss: bool = True
    kept: dict[str, Any] | None = None  # the last mailish round's database, for latency

    # -- preparation -----------------------------------------------------------------------

    async def _admin(self, sql: str) -> None:
        conn = await connecting.connect(self.pg.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def quiesce(self) -> None:
        """Start every round from the same state: no dirty pages, no pending checkpoint."""
        asyncio.run(self._admin("CHECKPOINT"))
        flush_dirty_pages()

    # -- mailish ---------------------------------------------------------------------------

    def mailish_round(self, database: str, *, profile: Path | None = None) -> dict[str, Any]:
        job = {
            "admin_dsn": self.pg.admin_dsn,
            "database": database,
            "port": self.dovecot.imaps_port,
            "ca_file": str(self.ca.ca_file),
            "user": self.user.name,
            "password": self.user.password,
            "pg_pid": self.pg.postmaster_pid,
            "dovecot_pid": self.dovecot.master_pid,
            "profile": str(profile) if profile else None,
        }
        run = run_child([sys.executable, "-m", "bench.sync_once"], stdin=json.dumps(job), cwd=REPO)
        if run.returncode != 0:
            raise RuntimeError(f"mailish round failed ({run.returncode}):\n{run.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = run.wall_s
        result["process_cpu_s"] = run.user_s + run.sys_s
        result["maxrss_mb"] = run.maxrss_mb
        self.exact_rss &= run.maxrss_exact
        if result["stored"] != self.messages:
            raise AssertionError(f"mailish stored {result['stored']} of {self.messages} messages")
        if result["unindexed"]:
            raise AssertionError(f"{result['unindexed']} messages left unindexed")
        return result

    def mailish_row(self, round_no: int, result: dict[str, Any]) -> SyncRow:
        return SyncRow(
            round=round_no, tool="mailish", seconds=result["sync_s"], messages=result["stored"],
            maxrss_mb=result["maxrss_mb"], user_s=result["sync_user_s"],
            sys_s=result["sync_sys_s"],
            dovecot_cpu_s=result["sync_dovecot_cpu_s"], pg_cpu_s=result["sync_pg_cpu_s"],
            indexer_s=result["index_s"],
        )  # fmt: skip

    def keep(self, result: dict[str, Any]) -> None:
        """Keep this round's database for the latency test; drop the previously kept one."""
        if self.kept is not None:
            self.drop(self.kept["database"])
        self.kept = result
        name = result["dsn"].split("?")[0].rsplit("/", 1)[-1]
        result["database"] = name
        # vacuum now, so autovacuum of 10k fresh rows does not land in the next timed round
        asyncio.run(self._vacuum(result["dsn"]))

    async def _vacuum(self, dsn: str) -> None:
        conn = await connecting.connect(dsn)
        try:
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()

    def drop(self, database: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

    # -- mbsync ----------------------------------------------------------------------------

    def mbsync_round(self, round_no: int) -> tuple[SyncRow, str]:
        with scratch_folder("mailish-bench-mbsync-") as folder:
            maildir = folder / "maildir"
            rc = write_mbsyncrc(
                folder, port=self.dovecot.imaps_port, user=self.user.name,
                password=self.user.password, ca_file=self.ca.ca_file, maildir=maildir,
            )  # fmt: skip
            dovecot0 = tree_cpu_s(self.dovecot.master_pid)
            run = run_child([MBSYNC, "-c", str(rc), "-a"])
            dovecot_cpu = tree_cpu_s(self.dovecot.master_pid) - dovecot0
            if run.returncode != 0:
                raise RuntimeError(f"mbsync failed ({run.returncode}):\n{run.stderr[-4000:]}")
            got = count_maildir(maildir / "INBOX")
            if got != self.messages:
                raise AssertionError(f"mbsync left {got} of {self.messages} messages")
            self.exact_rss &= run.maxrss_exact
            # flush its writes before the folder goes, so deleting is not billed to the next round
            flush_dirty_pages()
        row = SyncRow(
            round=round_no, tool="mbsync", seconds=run.wall_s, messages=got,
            maxrss_mb=run.maxrss_mb, user_s=run.user_s, sys_s=run.sys_s, dovecot_cpu_s=dovecot_cpu,
        )  # fmt: skip
        return row, (run.stdout + run.stderr).strip()


def warm_dovecot(dovecot: Dovecot, user: MailUser) -> None:
    """Let Dovecot build its index and uidlist before round 1, so neither tool pays for it."""
    dovecot.doveadm("mailbox", "status", "-u", user.name, "messages uidnext", "INBOX")
    subprocess.run(
        [dovecot.doveadm_bin, "-c", str(dovecot.config_path), "fetch", "-u", user.name,
         "uid flags date.received size.virtual", "mailbox", "INBOX"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=300,
    )  # fmt: skip


def tool_versions(dovecot: Dovecot) -> list[str]:
    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "?"
        return (done.stdout or done.stderr).strip().splitlines()[0]

    from mailish.store.embedded import find_binaries

    postgres = out([str(find_binaries() / "postgres"), "--version"])
    return [
        f"servers: Dovecot {out([dovecot.dovecot_bin, '--version'])} (COMPRESS not offered), "
        f"{postgres} (fsync on, synchronous_commit on), client {out([MBSYNC, '--version'])}",
        f"disk: PostgreSQL, Dovecot's Maildir and mbsync's Maildir all on "
        f"{_fs_of(Path('/tmp'))} under /tmp",
    ]


def _fs_of(path: Path) -> str:
    best = ("?", "?")
    best_len = -1
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mount, fstype, *_ = line.split()
        if str(path).startswith(mount) and len(mount) > best_len:
            best, best_len = (dev, fstype), len(mount)
    return f"{best[0]} ({best[1]})"


def which_or_fail(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"{binary} not installed (apt-get install -y isync)")
    return found
