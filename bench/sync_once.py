"""One mailish initial sync, run as its own process so its CPU and peak RSS can be measured.

Reads a JSON job on stdin, prints one JSON line on stdout. Steps: create and migrate a fresh
database, link the Dovecot account through the real linking service, claim the bucket lease,
open an IMAP session, then time ``AccountSync.sync_all`` (the initial sync) and, separately,
the background full-text indexer catching up (``index_pending``).

Phase timers wrap the real functions (nothing is replaced): the IMAP fetch (network plus our
wire parser), MIME parsing, and the fenced PostgreSQL transaction of each batch. Fetch and
parse of batch k+1 overlap the commit of batch k, so the phases add up to more than the wall
time. ``profile`` in the job runs the sync under cProfile and writes the stats file.

    python -m bench.sync_once < job.json
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bench.harness import tree_cpu_s
from bench.linking import create_database, ready_to_sync
from mailish.mail.credentials import KeyRing, new_key
from mailish.mail.imap.session import ImapSession
from mailish.store import connecting, folders, messages
from mailish.worker import folder_sync

OWNER = "bench-worker"

P = ParamSpec("P")
R = TypeVar("R")


class Phases:
    """Busy seconds and call counts per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap_async(
        self, name: str, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(func)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def wrap_sync(self, name: str, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return timed

    def install(self) -> None:
        """Wrap the sync's I/O and CPU steps where folder_sync looks them up."""
        fs = folder_sync.FolderSync
        ImapSession.fetch_messages = self.wrap_async(  # type: ignore[method-assign]
            "imap_fetch", ImapSession.fetch_messages
        )
        fs._build = staticmethod(self.wrap_sync("mime_parse", fs._build))  # type: ignore[method-assign]
        fs._commit = self.wrap_async("pg_txn", fs._commit)  # type: ignore[method-assign]
        messages.present = self.wrap_async("pg_present", messages.present)
        messages.store_batch = self.wrap_async("pg_store_batch", messages.store_batch)
        folders.recount = self.wrap_async("pg_recount", folders.recount)
        folders.save_state = self.wrap_async("pg_save_state", folders.save_state)


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM is per address space, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def run(job: dict[str, Any]) -> dict[str, Any]:
    phases = Phases()
    if job.get("phases", True):
        phases.install()
    dsn = await create_database(job["admin_dsn"], job["database"])
    pool = await connecting.connect_pool(dsn, min_size=1, max_size=10)
    try:
        async with ready_to_sync(
            pool, imaps_port=int(job["port"]), ca_file=Path(job["ca_file"]), user=job["user"],
            password=job["password"], keyring=KeyRing({"k1": new_key()}, "k1"), owner=OWNER,
        ) as ready:  # fmt: skip
            linked, sync, session = ready.linked, ready.sync, ready.session
            rss_ready = _vm_hwm_mb()
            cpu0 = _cpu_s()
            pg0, dovecot0 = tree_cpu_s(job.get("pg_pid")), tree_cpu_s(job.get("dovecot_pid"))
            profiler = cProfile.Profile() if job.get("profile") else None
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            await sync.sync_all(session)
            if profiler is not None:
                profiler.disable()
            sync_s = time.perf_counter() - started
            cpu1 = _cpu_s()
            pg_cpu = tree_cpu_s(job.get("pg_pid")) - pg0
            dovecot_cpu = tree_cpu_s(job.get("dovecot_pid")) - dovecot0
            rss_synced = _vm_hwm_mb()
        started = time.perf_counter()
        pg0 = tree_cpu_s(job.get("pg_pid"))
        indexed = await sync.index_pending()
        index_s = time.perf_counter() - started
        index_pg_cpu = tree_cpu_s(job.get("pg_pid")) - pg0
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE account_id=$1 AND expunged_at IS NULL",
                linked.account_id,
            )
            blob_bytes = await conn.fetchval(
                "SELECT coalesce(sum(size), 0) FROM message_blobs WHERE account_id=$1",
                linked.account_id,
            )
            db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
            unindexed = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE account_id=$1 AND search IS NULL",
                linked.account_id,
            )
    finally:
        await pool.close()
    if profiler is not None:
        profiler.dump_stats(job["profile"])
    return {
        "dsn": dsn,
        "account_id": str(linked.account_id),
        "bucket": linked.bucket,
        "owner": OWNER,
        "epoch": 1,
        "sync_s": sync_s,
        "sync_user_s": cpu1[0] - cpu0[0],
        "sync_sys_s": cpu1[1] - cpu0[1],
        "sync_pg_cpu_s": pg_cpu,
        "sync_dovecot_cpu_s": dovecot_cpu,
        "index_s": index_s,
        "index_pg_cpu_s": index_pg_cpu,
        "indexed": indexed,
        "unindexed": int(unindexed),
        "stored": int(stored),
        "blob_bytes": int(blob_bytes),
        "db_bytes": int(db_bytes),
        "rss_ready_mb": rss_ready,
        "rss_synced_mb": rss_synced,
        "rss_peak_mb": _vm_hwm_mb(),
        "phases": phases.seconds,
        "phase_calls": phases.calls,
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    result = asyncio.run(run(job))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
