"""Scale benchmark: one worker process holding N accounts online, for N = 500, 1,000, 2,000.

    python -m bench.scale --accounts 500,1000,2000 [--deliveries 200] [--idle-window 65]

Each account is a distinct Dovecot user (a tiny INBOX plus Dovecot's five special-use
folders) with its own implicit-TLS connection waiting in NOTIFY.
Per N, against a fresh database on a durable PostgreSQL (fsync on, as the other benchmarks):

1. start ``mailish worker``; once it holds every bucket, link one warm-up account and wait
   until it is online; that process is the RSS baseline (imports, pools, first-use caches);
2. insert the other N-1 accounts in one transaction and time until all N are online
   (``sync_state = 'idle'``: first round done, back to waiting), which includes the worker's
   audit noticing them (every 2 s);
3. RSS per idle account = (RSS after the idle window - baseline) / (N - 1);
4. CPU while idle = the worker's user+system CPU over a window at least as long as the
   safety-net poll (``SyncTuning.poll_interval``, 60 s), so each account's periodic round
   falls inside it once;
5. delivery latency: APPEND ``--deliveries`` messages to random accounts at ``--rate`` per
   second; latency = APPEND returned -> the row visible in PostgreSQL (polled every 10 ms).

The table goes to stdout and bench/results/scale_latest.txt. ``--peer`` adds a same-machine
baseline: the same accounts held by bare aioimaplib IDLE connections in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from bench.harness import DurablePostgres, scratch_folder, tree_cpu_s
from bench.linking import create_database
from bench.report import RESULTS, Report, machine_line
from bench.scale_rig import (
    WorkerProcess,
    deliver_and_time,
    ensure_inotify_instances,
    inbox_ids,
    make_users,
    new_keyring,
    raise_open_files_limit,
    random_targets,
    seed_accounts,
    take_over,
    wait_claimed,
    wait_online,
)
from mailish.store import connecting
from tests.harness.ca import make_ca
from tests.harness.dovecot import Dovecot, MailUser

SCALE_RESULTS = RESULTS / "scale_latest.txt"
TARGET_ONLINE_S = 60.0  # for 2,000 accounts
TARGET_RSS_KB = 100.0
TARGET_IDLE_CPU_PCT = 5.0
TARGET_P99_S = 2.0


@dataclass(frozen=True)
class Knobs:
    deliveries: int = 200
    rate: float = 20.0  # deliveries per second
    idle_window: float = 65.0
    settle: float = 5.0
    online_limit: float = 600.0
    delivery_limit: float = 90.0  # past the 60 s safety-net poll
    profile: bool = False  # run the worker under cProfile (bench/results/scale_profile_N.txt)


@dataclass
class SizeResult:
    accounts: int
    online_s: float
    online_cpu_s: tuple[float, float, float]  # worker, PostgreSQL, Dovecot while coming online
    connections: int
    base_rss_kb: int
    idle_rss_kb: int
    peak_rss_kb: int
    idle_cpu_pct: float
    dovecot_cpu_pct: float
    pg_cpu_pct: float
    latencies_s: list[float] = field(default_factory=list)
    missing: int = 0
    load: tuple[float, float] = (0.0, 0.0)
    note: str = ""
    #: A fresh worker taking every bucket over after the first one was SIGKILLed: seconds
    #: until all N finished a round again, and that worker's CPU seconds meanwhile.
    takeover_s: float | None = None
    takeover_cpu_s: float = 0.0

    @property
    def rss_per_account_kb(self) -> float:
        return (self.idle_rss_kb - self.base_rss_kb) / max(1, self.accounts - 1)


@dataclass(frozen=True)
class Servers:
    dovecot: Dovecot
    ca_file: Path
    admin_dsn: str
    pg_pid: int | None
    workdir: Path


async def run_size(
    servers: Servers, users: Sequence[MailUser], knobs: Knobs, *, label: str = ""
) -> SizeResult:
    """One worker holding ``len(users)`` accounts; see the module docstring for the steps."""
    n = len(users)
    dsn = await create_database(servers.admin_dsn, f"scale_{n}{label}")
    keyring, secret_keys = new_keyring()
    workdir = servers.workdir / f"worker-{n}{label}"
    stats = workdir / "worker.pstats" if knobs.profile else None
    worker = WorkerProcess(
        dsn=dsn, secret_keys=secret_keys, ca_file=servers.ca_file, workdir=workdir, profile=stats
    )
    load_before = os.getloadavg()[0]
    conn = await connecting.connect(dsn)
    try:
        worker.start()
        await wait_claimed(conn, limit=60, worker=worker)
        port = servers.dovecot.imaps_port
        ids = await seed_accounts(conn, users[:1], keyring=keyring, imaps_port=port)
        await wait_online(conn, 1, limit=60)
        await asyncio.sleep(knobs.settle)
        base = worker.usage()
        cpu0 = (tree_cpu_s(servers.dovecot.master_pid), tree_cpu_s(servers.pg_pid))
        ids |= await seed_accounts(conn, users[1:], keyring=keyring, imaps_port=port)
        online_s = await wait_online(conn, n, limit=knobs.online_limit)
        online_cpu = (
            worker.usage().cpu_s - base.cpu_s,
            tree_cpu_s(servers.pg_pid) - cpu0[1],
            tree_cpu_s(servers.dovecot.master_pid) - cpu0[0],
        )
        worker.check_alive()
        connections = worker.imap_connections(port)
        await asyncio.sleep(knobs.settle)
        before = worker.usage()
        dovecot0, pg0 = tree_cpu_s(servers.dovecot.master_pid), tree_cpu_s(servers.pg_pid)
        started = time.monotonic()
        await asyncio.sleep(knobs.idle_window)
        window = time.monotonic() - started
        after = worker.usage()
        dovecot_cpu = tree_cpu_s(servers.dovecot.master_pid) - dovecot0
        pg_cpu = tree_cpu_s(servers.pg_pid) - pg0
        worker.check_alive()
        inboxes = await inbox_ids(conn, ids)
        targets = random_targets(sorted(ids), knobs.deliveries, seed=n)
        deliveries = await deliver_and_time(
            conn, servers.dovecot, targets, inboxes, rate=knobs.rate, limit=knobs.delivery_limit
        )
        worker.check_alive()
        takeover_s, takeover_cpu = (
            (None, 0.0)
            if knobs.profile
            else await take_over(conn, worker, n, limit=knobs.online_limit)
        )  # a SIGKILLed worker writes no profile
    finally:
        await conn.close()
        worker.stop()
        await _drop_database(servers.admin_dsn, f"scale_{n}{label}")
    if stats is not None and stats.exists():
        write_profile(stats, RESULTS / f"scale_profile_{n}.txt")
    return SizeResult(
        accounts=n, online_s=online_s, online_cpu_s=online_cpu, connections=connections,
        base_rss_kb=base.rss_kb,
        idle_rss_kb=after.rss_kb, peak_rss_kb=after.hwm_kb,
        idle_cpu_pct=100 * (after.cpu_s - before.cpu_s) / window,
        dovecot_cpu_pct=100 * dovecot_cpu / window, pg_cpu_pct=100 * pg_cpu / window,
        latencies_s=[d.seen_after for d in deliveries if d.seen_after is not None],
        missing=sum(1 for d in deliveries if d.seen_after is None),
        load=(load_before, os.getloadavg()[0]),
        takeover_s=takeover_s, takeover_cpu_s=takeover_cpu,
    )  # fmt: skip


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await connecting.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_peer(servers: Servers, users: Sequence[MailUser], window: float = 10.0) -> dict[str, Any]:
    """The aioimaplib baseline (bench/idle_peer.py) as its own process."""
    job = {
        "ca_file": str(servers.ca_file), "port": servers.dovecot.imaps_port, "window": window,
        "users": [[u.name, u.password] for u in users],
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench.idle_peer"], input=json.dumps(job), capture_output=True,
        text=True, timeout=900, check=False, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"idle_peer failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def write_profile(stats_path: Path, out: Path) -> None:
    text = StringIO()
    stats = pstats.Stats(str(stats_path), stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    out.write_text(text.getvalue(), encoding="utf-8")


# --- the table ----------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return f"{ordered[index] * 1000:.0f}"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def scale_table(results: list[SizeResult], knobs: Knobs, peers: list[dict[str, Any]]) -> str:
    lines = [
        "scale: one `mailish worker` process, N accounts online (each its own Dovecot user, "
        "implicit TLS, NOTIFY)",
        f"{'accounts':>8} {'online s':>9} {'conns':>6} {'RSS/acct KB':>12} "
        f"{'RSS MB base/idle/peak':>22} {'idle CPU %':>10} {'Dovecot %':>9} {'PG %':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'seen':>8}",
        f"{'target':>8} {'<60@2000':>9} {'':>6} {'<100':>12} {'':>22} {'<5':>10} {'':>9} {'':>5} "
        f"{'':>7} {'<2000':>7}",
    ]
    for r in results:
        lat = r.latencies_s
        rss = f"{r.base_rss_kb / 1024:.0f}/{r.idle_rss_kb / 1024:.0f}/{r.peak_rss_kb / 1024:.0f}"
        lines.append(
            f"{r.accounts:>8} {r.online_s:>9.1f} {r.connections:>6} {r.rss_per_account_kb:>12.0f} "
            f"{rss:>22} {r.idle_cpu_pct:>10.1f} {r.dovecot_cpu_pct:>9.1f} {r.pg_cpu_pct:>5.1f} "
            f"{_ms(lat, 0.5):>7} {_ms(lat, 0.99):>7} {_ms(lat, 1.0):>7} "
            f"{len(lat):>4}/{len(lat) + r.missing:<3}" + (f"  {r.note}" if r.note else "")
        )
    lines.append("CPU seconds spent bringing them online (worker / PostgreSQL / Dovecot):")
    for r in results:
        worker, pg, dovecot = r.online_cpu_s
        lines.append(
            f"  {r.accounts:>5}: {worker:.1f} / {pg:.1f} / {dovecot:.1f}"
            f"   ({1000 * worker / max(1, r.accounts - 1):.1f} ms of worker CPU per account)"
        )
    lines.append(
        "takeover after SIGKILL (a fresh worker process claims every bucket and re-syncs all N):"
    )
    for r in results:
        if r.takeover_s is not None:
            lines.append(
                f"  {r.accounts:>5}: all online again in {r.takeover_s:.1f} s from process start,"
                f" {r.takeover_cpu_s:.1f} s worker CPU"
                f" ({1000 * r.takeover_cpu_s / max(1, r.accounts):.1f} ms per account)"
            )
    lines.append("against the targets:")
    for r in results:
        p99 = sorted(r.latencies_s)[round(0.99 * (len(r.latencies_s) - 1))] if r.latencies_s else 99
        checks = [
            f"RSS/account {_mark(r.rss_per_account_kb < TARGET_RSS_KB)}",
            f"idle CPU {_mark(r.idle_cpu_pct < TARGET_IDLE_CPU_PCT)}",
            f"p99 {_mark(p99 < TARGET_P99_S and not r.missing)}",
        ]
        if r.accounts >= 2000:
            checks.insert(0, f"online {_mark(r.online_s < TARGET_ONLINE_S)}")
        loads = f"load avg {r.load[0]:.1f} -> {r.load[1]:.1f}"
        lines.append(f"  {r.accounts:>5}: " + ", ".join(checks) + f"   ({loads})")
    lines += [
        "context (published figures, not measured here):",
        "  Nylas sync engine: capped at 150 accounts per sync process",
        "  EmailEngine docs: 1,000-5,000 accounts on 4 GiB RAM and 2 CPUs (0.8-4 MiB per account)",
        "    plus 1-2 MiB of Redis per account",
    ]
    for peer in peers:
        per = (peer["idle_rss_kb"] - peer["base_rss_kb"]) / max(1, peer["accounts"] - 1)
        lines.append(
            f"same machine: bare aioimaplib 2.0.3, one TLS IDLE per account, one process, "
            f"{peer['accounts']} accounts: {per:.0f} KB RSS/account, online in "
            f"{peer['online_s']:.1f} s, idle CPU {peer['idle_cpu_pct']:.1f}%"
        )
    lines += [
        "notes:",
        "  online s: from inserting N-1 accounts (a warm-up account is already online) until",
        "    all N finished their first round and wait in NOTIFY; includes the worker's 2 s audit.",
        "  conns: the worker's established TCP connections to Dovecot's IMAPS port then.",
        "  RSS/acct: (RSS after the idle window - RSS with the warm-up account) / (N-1).",
        f"  idle CPU: worker user+sys over {knobs.idle_window:.0f} s, % of one core; Dovecot and",
        "    PostgreSQL: their whole process trees over the same window.",
        f"  latency: {knobs.deliveries} APPENDs to random accounts at {knobs.rate:.0f}/s, APPEND",
        "    returned -> row visible in PostgreSQL (polled every 10 ms); Dovecot itself",
        "    reports changes to an idle NOTIFY/IDLE client up to ~0.5 s late.",
        "  PostgreSQL: fsync on (durable), pool of 10 (MAILISH_DB_POOL_MAX default).",
        "  2 cores shared with other engineers' test runs: see the load averages.",
    ]
    return "\n".join(lines)


# --- the driver ---------------------------------------------------------------------------


async def benchmark(
    sizes: Sequence[int], knobs: Knobs, *, peer: bool, report: Report, root: Path
) -> list[SizeResult]:
    raise_open_files_limit()
    report.environment.append(ensure_inotify_instances(max(8192, 2 * max(sizes))))
    ca = make_ca(root / "ca")
    dovecot = Dovecot(root / "dovecot", ca, imap_processes=max(sizes) + 200)
    pg = DurablePostgres()
    results: list[SizeResult] = []
    peers: list[dict[str, Any]] = []
    try:
        dovecot.start()
        pg.start()
        started = time.monotonic()
        users = make_users(dovecot, max(sizes))
        print(f"{len(users)} Dovecot users in {time.monotonic() - started:.1f} s", flush=True)
        servers = Servers(dovecot, ca.ca_file, pg.admin_dsn, pg.postmaster_pid, root / "work")
        for n in sizes:
            result = await run_size(servers, users[:n], knobs)
            results.append(result)
            print(f"{n} accounts: online in {result.online_s:.1f} s", flush=True)
            report.sections[:] = [scale_table(results, knobs, peers)]
            report.write()  # a run that dies later still leaves what it measured
        if peer:
            peers.append(await asyncio.to_thread(run_peer, servers, users[: min(sizes)]))
    finally:
        dovecot.stop()
        pg.stop()
    report.sections.clear()
    report.add(scale_table(results, knobs, peers))
    return results


def parse_args(argv: Sequence[str] | None = None) -> tuple[list[int], Knobs, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--accounts", default="500,1000,2000", help="comma-separated sizes")
    parser.add_argument("--deliveries", type=int, default=Knobs.deliveries)
    parser.add_argument("--rate", type=float, default=Knobs.rate)
    parser.add_argument("--idle-window", type=float, default=Knobs.idle_window)
    parser.add_argument("--peer", action="store_true", help="add the aioimaplib baseline")
    parser.add_argument("--profile", action="store_true", help="run the worker under cProfile")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.accounts.split(",") if s.strip()]
    knobs = Knobs(
        deliveries=args.deliveries, rate=args.rate, idle_window=args.idle_window,
        profile=args.profile,
    )  # fmt: skip
    return sizes, knobs, args.peer


def main(argv: Sequence[str] | None = None) -> None:
    sizes, knobs, peer = parse_args(argv)
    report = Report(environment=[machine_line()], path=SCALE_RESULTS)
    with scratch_folder("mailish-scale-") as root:
        root.chmod(0o755)  # Dovecot's mail processes (uid nobody) must reach the mail
        asyncio.run(benchmark(sizes, knobs, peer=peer, report=report, root=root))


if __name__ == "__main__":
    main()
