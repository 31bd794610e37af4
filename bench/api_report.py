"""The API benchmark's table, written to bench/results/api_latest.txt."""

from __future__ import annotations

from dataclasses import dataclass

from bench.api_load import LoadResult
from bench.report import RESULTS

API_LATEST = RESULTS / "api_latest.txt"


@dataclass(frozen=True)
class Row:
    what: str
    processes: str  # "1", "2", or "-" for IMAP
    conns: int
    result: LoadResult


def _pct(cpu_s: float, window_s: float) -> str:
    return f"{100 * cpu_s / window_s:.0f}" if window_s > 0 else "-"


def table(rows: list[Row], *, messages: int, seconds: float) -> str:
    lines = [
        f"API vs IMAP, {messages:,}-message folder, newest 50 / one message",
        f"{'what':<29} {'processes':<9} {'conns':<5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'KB/resp':>8}   CPU %: {'api':>4} {'PG':>4} {'Dovecot':>7} {'client':>6} {'other':>5}",
    ]
    for row in rows:
        r = row.result
        api = _pct(r.server_cpu_s, r.window_s) if row.processes != "-" else "-"
        lines.append(
            f"{row.what:<29} {row.processes:<9} {row.conns:<5} {r.rate:>7.0f} "
            f"{r.p50_s * 1000:>7.2f} {r.p99_s * 1000:>7.2f} {r.bytes_per_response / 1024:>8.1f}"
            f"          {api:>4} {_pct(r.pg_cpu_s, r.window_s):>4} "
            f"{_pct(r.dovecot_cpu_s, r.window_s):>7} {_pct(r.client_cpu_s, r.window_s):>6} "
            f"{_pct(r.other_cpu_s, r.window_s):>5}"
        )
    lines += [
        f"  each row: {seconds:g} s of closed-loop load after a warm-up (every connection sends",
        "  its next request when the previous answer arrives); p50/p99 per request.",
        "  CPU %: user+system CPU over the row's wall time, 100 = one core (this machine has",
        "  2 in all, shared by the load generator, the api processes, PostgreSQL and Dovecot);",
        "  other = the rest of the machine's busy time (/proc/stat): work that is not this",
        "  benchmark's, which takes cores away from it (0-5 is noise: our own bookkeeping).",
        "  KB/resp: bytes received per request (HTTP: headers + JSON body; IMAP: every",
        "  response line and literal).",
    ]
    return "\n".join(lines)
