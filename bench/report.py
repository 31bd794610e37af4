"""Printing the benchmark tables and keeping bench/results/latest.txt in step with them."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LATEST = RESULTS / "latest.txt"


@dataclass
class Report:
    """Sections printed as they are produced; the file is rewritten after each one, so a
    run that dies halfway still leaves what it measured."""

    environment: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    path: Path = LATEST

    def add(self, text: str) -> None:
        text = text.rstrip("\n")
        print("\n" + text, flush=True)
        self.sections.append(text)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        head = [f"mailish benchmark, {stamp}", *self.environment]
        body = "\n".join(head) + "\n\n" + "\n\n".join(self.sections) + "\n"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(self.path)


def machine_line() -> str:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


@dataclass(frozen=True)
class SyncRow:
    round: int
    tool: str
    seconds: float
    messages: int
    maxrss_mb: float
    user_s: float
    sys_s: float
    dovecot_cpu_s: float
    pg_cpu_s: float | None = None
    indexer_s: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def sync_table(rows: list[SyncRow], *, messages: int, megabytes: float, exact_rss: bool) -> str:
    lines = [
        f"initial sync, {messages:,} messages ({megabytes:.1f} MB), COMPRESS off, fsync on, "
        "same disk",
        f"{'round':<6} {'tool':<8} {'seconds':>8} {'msgs/s':>8} {'peak RSS MB':>12} "
        f"{'client CPU usr+sys':>18} {'PG CPU s':>9} {'Dovecot CPU s':>14}   (mailish: +indexer s)",
    ]
    for r in rows:
        cpu = f"{r.user_s:.2f}+{r.sys_s:.2f}"
        lines.append(
            f"{r.round:<6} {r.tool:<8} {r.seconds:>8.2f} {r.rate:>8.0f} {r.maxrss_mb:>12.1f} "
            f"{cpu:>18} {_opt(r.pg_cpu_s, '.2f'):>9} {r.dovecot_cpu_s:>14.2f}"
            + (f"   +{r.indexer_s:.2f}" if r.indexer_s is not None else "")
        )
    by_tool: dict[str, list[float]] = {}
    for r in rows:
        by_tool.setdefault(r.tool, []).append(r.rate)
    if "mailish" in by_tool and "mbsync" in by_tool:
        ratio = statistics.median(by_tool["mailish"]) / statistics.median(by_tool["mbsync"])
        lines.append(f"median mailish / mbsync msgs/s ratio: {ratio:.2f}")
    for tool, rates in by_tool.items():
        lines.append(
            f"  {tool}: median {statistics.median(rates):.0f} msgs/s, "
            f"range {min(rates):.0f}-{max(rates):.0f}"
        )
    rss_source = "GNU time %M of the tool's own process" if exact_rss else "wait4 (upper bound)"
    lines += [
        "notes:",
        "  seconds: mailish = AccountSync.sync_all(session) on a logged-in session (fresh",
        "    database each round); mbsync = the whole `mbsync -a` process (connect, TLS, login,",
        "    sync), into a fresh Maildir. +indexer s: index_pending() catching up afterwards,",
        "    not included in seconds or msgs/s.",
        f"  peak RSS: {rss_source};",
        "    PostgreSQL's memory (shared buffers, backends) is excluded, as is the page cache",
        "    that mbsync's Maildir writes occupy.",
        "  client CPU: user+system seconds; mailish during sync_all only, mbsync for its",
        "    whole process.",
        "  PG / Dovecot CPU: user+system of the server's process tree during the sync.",
    ]
    return "\n".join(lines)


def phase_table(results: list[dict[str, Any]]) -> str:
    """Where a mailish round's time went (busy seconds per phase, which overlap)."""
    lines = [
        "mailish initial sync, where the time goes (busy seconds per phase; the IMAP fetch and",
        "MIME parse of batch k+1 run while batch k's PostgreSQL transaction commits):",
        f"{'round':<6} {'sync s':>7} {'IMAP fetch':>11} {'MIME parse':>11} {'PG txn':>7} "
        f"{'store_batch':>12} {'present':>8} {'batches':>8}  {'client CPU':>10} {'PG CPU':>7} "
        f"{'Dovecot CPU':>11}  {'indexer s':>9} {'its PG CPU':>10}",
    ]
    for i, res in enumerate(results, 1):
        ph: dict[str, float] = res["phases"]
        calls: dict[str, int] = res["phase_calls"]

        def p(name: str, ph: dict[str, float] = ph) -> float:
            return float(ph.get(name, 0.0))

        lines.append(
            f"{i:<6} {res['sync_s']:>7.2f} {p('imap_fetch'):>11.2f} {p('mime_parse'):>11.2f} "
            f"{p('pg_txn'):>7.2f} {p('pg_store_batch'):>12.2f} {p('pg_present'):>8.2f} "
            f"{calls.get('pg_txn', 0):>8}  {res['sync_user_s'] + res['sync_sys_s']:>10.2f} "
            f"{res['sync_pg_cpu_s']:>7.2f} {res['sync_dovecot_cpu_s']:>11.2f}  "
            f"{res['index_s']:>9.2f} {res['index_pg_cpu_s']:>10.2f}"
        )
    lines += [
        "  IMAP fetch = UID FETCH round trip + our wire parser; MIME parse = domain build()",
        "  (headers, MIME tree, snippet, sha256); PG txn = the fenced transaction of one batch",
        "  (claim check, blobs, rows, attachments, change log, recount, checkpoint, COMMIT with",
        "  fsync); store_batch is the part of it that writes blobs/rows. indexer: to_tsvector",
        "  + GIN insert for the stored messages, 500 per transaction, after the sync.",
    ]
    return "\n".join(lines)


def _percentiles(values_s: list[float]) -> str:
    ms = sorted(x * 1000 for x in values_s)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[-1] if len(ms) >= 2 else ms[0]
    return (
        f"p50 {statistics.median(ms):4.0f} ms   p95 {p95:4.0f} ms   max {ms[-1]:4.0f} ms   "
        f"(min {ms[0]:.0f}, mean {statistics.fmean(ms):.0f})"
    )


def latency_section(
    latencies_s: list[float],
    server_s: list[float],
    mailish_s: list[float],
    *,
    mode: str,
    deliveries: int,
    mailbox: int,
) -> str:
    path = "NOTIFY" if mode == "notify" else "IDLE (no NOTIFY)"
    lines = [
        f"delivery latency, {path}: {deliveries} messages (5-20 KB) appended one at a time to "
        f"an INBOX of {mailbox:,}, fsync on",
        f"  APPEND returned -> row visible in PostgreSQL:   {_percentiles(latencies_s)}",
    ]
    if server_s:
        lines += [
            f"  split ({len(server_s)} of {len(latencies_s)} matched to the event that woke "
            "the sync loop):",
            f"    Dovecot, APPEND returned -> event at mailish: {_percentiles(server_s)}",
            f"    mailish, event -> row visible:                {_percentiles(mailish_s)}",
        ]
    lines += [
        "  each message appended while the loop waited (IDLE/NOTIFY entered), 50-300 ms in;",
        "  rows polled every 5 ms. Dovecot notices changes to an idle client with a 500 ms",
        "  delay (NOTIFY_DELAY_MSECS in its mailbox-watch / mailbox-list-index-notify code).",
    ]
    if mode == "notify":
        lines.append("  mailish's part includes the loop's 50 ms debounce (SyncTuning.debounce).")
    return "\n".join(lines)
