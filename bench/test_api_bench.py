"""API read latency and throughput vs asking Dovecot directly (issue 4).

Run with ``.venv/bin/pytest bench/test_api_bench.py -m slow -s -p no:cacheprovider``.
A 50,000-message INBOX is loaded into the benchmark's Dovecot, linked and synced by mailish
into the benchmark's durable PostgreSQL (fsync on), then served by 1 and then 2 separate
``mailish api`` processes under wrk; the same newest-50 listing is then taken straight from
Dovecot over IMAP, on a fresh connection and on an open one. The table is printed and written
to bench/results/api_latest.txt.
Knobs (environment): MAILISH_BENCH_API_MESSAGES (50000), MAILISH_BENCH_API_SECONDS (10 per
row), MAILISH_BENCH_API_QUIET_WAIT (120: at most this many seconds to wait, before each try of
a row, for the machine to go idle; other work on 2 cores moves these numbers more than
anything measured here).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import re
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.api_imap import Imap, run_imap
from bench.api_load import (
    ApiFleet,
    LoadResult,
    run_wrk,
    wait_for_quiet,
    write_wrk_script,
    wrk_version,
)
from bench.api_report import API_LATEST, Row, table
from bench.api_sync import Synced, sync_inbox
from bench.harness import DurablePostgres, knob, scratch_folder
from bench.report import Report, machine_line
from bench.rounds import warm_dovecot
from mailish.mail.credentials import KeyRing, format_key, new_key
from mailish.store.embedded import find_binaries
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot

BENCH_TIMEOUT = 7200
WARMUP_S = 3
ATTEMPTS = 3  # tries per row when other work disturbs it
DISTURBED = 0.15  # cores of other work during a row that make it worth another try
_SUBJECT = re.compile(rb"^Subject: (.*?)\r?$", re.MULTILINE | re.IGNORECASE)


def _version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def check_api(port: int, synced: Synced, messages: int) -> list[str]:
    """Through the API: INBOX is complete, the first page has 50, a message opens.

    Returns the subjects of the newest 50, to compare with what IMAP lists.
    """
    headers = {"Authorization": f"Bearer {synced.token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as api:
        folders = api.get("/v1/folders").raise_for_status().json()["folders"]
        inbox = next(f for f in folders if f["path"] == "INBOX")
        assert inbox["id"] == synced.inbox_id
        assert inbox["total"] == messages
        page = api.get(f"/v1/folders/{synced.inbox_id}/messages", params={"limit": 50})
        listed = page.raise_for_status().json()
        assert len(listed["messages"]) == 50
        assert listed["next_cursor"]
        some = random.Random(3).choice(synced.message_ids)
        opened = api.get(f"/v1/messages/{some}").raise_for_status().json()
        assert opened["id"] == some
        assert opened["subject"]
    return [m["subject"] for m in listed["messages"]]


async def imap_newest_subjects(job: dict[str, Any]) -> list[str]:
    context = ssl.create_default_context(cafile=job["ca_file"])
    imap = await Imap.connect(job["host"], int(job["port"]), context)
    try:
        await imap.login(job["user"], job["password"])
        exists = await imap.select_inbox()
        first = max(1, exists - 49)
        got = await imap.command(f"FETCH {first}:{exists} (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    finally:
        await imap.close(logout=True)
    subjects = []
    for response in got:
        match = _SUBJECT.search(response)
        if match:
            subjects.append(match.group(1).decode().strip())
    return subjects


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT)
def test_api_vs_imap(
    bench_dovecot: Dovecot, bench_ca: LocalCA, durable_pg: DurablePostgres
) -> None:
    messages = knob("API_MESSAGES", 50_000)
    seconds = knob("API_SECONDS", 10)
    quiet_wait = knob("API_QUIET_WAIT", 120)
    dovecot = bench_dovecot
    user = dovecot.add_user()
    started = time.perf_counter()
    mailbox_bytes = dovecot.load_maildir(user, messages, seed=2)
    warm_dovecot(dovecot, user)
    print(f"\nloaded {messages:,} messages into Dovecot in {time.perf_counter() - started:.0f} s")

    secret_keys = format_key("bench", new_key())
    synced = asyncio.run(
        sync_inbox(
            admin_dsn=durable_pg.admin_dsn, database="bench_api", imaps_port=dovecot.imaps_port,
            ca_file=bench_ca.ca_file, user=user.name, password=user.password,
            keyring=KeyRing.parse(secret_keys),
        )
    )  # fmt: skip
    assert len(synced.message_ids) == messages
    print(f"mailish synced them in {synced.sync_s:.0f} s", flush=True)
    report = Report(
        environment=[
            machine_line(),
            f"servers: Dovecot {_version([dovecot.dovecot_bin, '--version'])} (implicit TLS, "
            f"COMPRESS off), {_version([str(find_binaries() / 'postgres'), '--version'])} "
            "(mailish's embedded server, durable: fsync on), "
            f"load generator {wrk_version()}",
            f"data: {messages:,} messages ({mailbox_bytes / 1e6:.0f} MB) in one INBOX, synced by "
            f"mailish (AccountSync.sync_all, no search indexing) in {synced.sync_s:.0f} s; "
            f"database {synced.db_bytes / 1e6:.0f} MB; everything warm in the page cache",
        ],
        path=API_LATEST,
    )
    pg_pid, dovecot_pid = durable_pg.postmaster_pid, dovecot.master_pid
    rows: list[Row] = []
    load_before = os.getloadavg()[0]

    def keep(what: str, processes: str, conns: int, run: Callable[[], LoadResult]) -> None:
        """Measure a row; on a busy machine, wait for quiet and retry, keeping the calmest."""
        best: LoadResult | None = None
        for _attempt in range(ATTEMPTS):
            wait_for_quiet(quiet_wait)
            result = run()
            if best is None or result.other_cpu_s / result.window_s < (
                best.other_cpu_s / best.window_s
            ):
                best = result
            if best.other_cpu_s / best.window_s < DISTURBED:
                break
        assert best is not None
        r = best
        print(
            f"  {what:<29} processes {processes} conns {conns:>2}: {r.rate:7.0f} req/s"
            f"  p50 {r.p50_s * 1000:6.2f} ms  p99 {r.p99_s * 1000:6.2f} ms"
            f"  (other work on the machine: {100 * r.other_cpu_s / r.window_s:.0f}% of a core)",
            flush=True,
        )
        rows.append(Row(what, processes, conns, best))

    with scratch_folder("mailish-bench-api-") as folder:
        folder.chmod(0o755)
        ids_file = folder / "ids.txt"
        ids_file.write_text("".join(f"{i}\n" for i in synced.message_ids))
        # --- mailish api ------------------------------------------------------------------
        with ApiFleet(dsn=synced.dsn, secret_keys=secret_keys, folder=folder) as fleet:
            api_newest: list[str] = []
            for processes in (1, 2):
                while len(fleet.processes) < processes:
                    fleet.add()
                    api_newest = check_api(fleet.ports[-1], synced, messages)
                for mode, what in (
                    ("list", "mailish list newest 50"),
                    ("read", "mailish read one message"),
                ):
                    script = write_wrk_script(
                        folder / f"{mode}{processes}.lua", ports=fleet.ports, token=synced.token,
                        mode=mode, folder=synced.inbox_id, ids_file=ids_file,
                    )  # fmt: skip

                    def load(conns: int, secs: float, script: Path = script) -> LoadResult:
                        result = run_wrk(
                            script, port=fleet.ports[0], conns=conns, threads=min(2, conns),
                            seconds=secs, fleet=fleet, pg_pid=pg_pid, dovecot_pid=dovecot_pid,
                        )  # fmt: skip
                        assert result.errors == 0, f"{script.name} x{conns}: {result.errors} errors"
                        return result

                    load(16, WARMUP_S)
                    for conns in (1, 16, 64) if processes == 1 else (16, 64):
                        keep(what, str(processes), conns, functools.partial(load, conns, seconds))
        # --- IMAP straight from Dovecot -----------------------------------------------------
        job = {
            "host": "127.0.0.1", "port": dovecot.imaps_port, "ca_file": str(bench_ca.ca_file),
            "user": user.name, "password": user.password, "messages": messages,
        }  # fmt: skip
        imap_newest = asyncio.run(imap_newest_subjects(job))
        for mode, what in (
            ("new", "IMAP newest 50 (new conn)"),
            ("open", "IMAP newest 50 (open conn)"),
            ("read", "IMAP one message (open conn)"),
        ):
            mode_job = {**job, "mode": mode}

            def imap(conns: int, secs: float, mode_job: dict[str, Any] = mode_job) -> LoadResult:
                return run_imap(
                    job=mode_job, conns=conns, processes=min(2, conns), seconds=secs,
                    pg_pid=pg_pid, dovecot_pid=dovecot_pid,
                )  # fmt: skip

            imap(4, WARMUP_S)
            for conns in (1, 16):
                keep(what, "-", conns, functools.partial(imap, conns, seconds))

    same = len(set(api_newest) & set(imap_newest))
    notes = [
        f"1-minute load average {load_before:.2f} when the rows started, "
        f"{os.getloadavg()[0]:.2f} after. Each row waits",
        f"  for an idle machine first, and is measured again (up to {ATTEMPTS} tries) if other",
        f"  work took over {100 * DISTURBED:.0f}% of a core meanwhile; the calmest try is kept.",
        f"same newest 50: mailish (by Date) and IMAP (by sequence number) agree on {same} of 50",
        "what each row does:",
        "  mailish list newest 50: GET /v1/folders/{INBOX}/messages?limit=50 (first page, JSON",
        "    with from/to/subject/date/flags/snippet/size), bearer token checked in PostgreSQL",
        "    on every request; plain HTTP/1.1 keep-alive on loopback (no TLS: in production it",
        "    ends at the ingress), wrk 2 threads (1 for 1 conn), 2 processes = one wrk thread",
        "    and half the connections per process/port.",
        "  mailish read one message: GET /v1/messages/{random id of the 50k}: stored raw bytes",
        "    from PostgreSQL, MIME-parsed, html sanitized, returned as JSON.",
        "  IMAP newest 50 (new conn): TLS connect + LOGIN + SELECT INBOX + FETCH EXISTS-49:EXISTS",
        "    (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]),",
        "    timed to the FETCH's OK (LOGOUT after, untimed); full TLS handshake each time.",
        "  IMAP newest 50 (open conn): SELECT INBOX + the same FETCH on a logged-in connection.",
        "  IMAP one message (open conn): UID FETCH <random uid> (UID FLAGS BODY.PEEK[]) with INBOX",
        "    selected: the raw message, which the client still has to parse.",
        "  IMAP clients: a minimal asyncio IMAP client (bench/api_imap.py), 16 conns = 2",
        "    processes x 8 connections; Dovecot forks one imap process per connection.",
        "  Dovecot here stores mail as Maildir: its UID -> file name map (dovecot-uidlist,",
        "    2.7 MB at 50,000 messages) is parsed again by a SELECT + FETCH cycle (perf of imap",
        "    process: maildir_filename_base_hash/_cmp and hash_table_lookup ~60%), about 20 ms",
        "    of CPU at 50k. That is this storage format's cost, not IMAP's: other servers",
        "    (Gmail, Exchange, Dovecot with mdbox) will differ.",
    ]
    report.add(table(rows, messages=messages, seconds=seconds) + "\n" + "\n".join(notes))
    assert all(r.result.rate > 0 for r in rows)
