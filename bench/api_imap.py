"""The IMAP side of the API benchmark: what a mail client without mailish does.

A minimal IMAP client (asyncio streams + ssl, no library: it reads lines and literals and
nothing more) measures three operations against Dovecot, each timed from the first byte sent
to the tagged OK of the last command:

- ``new``:  TLS connect + greeting + LOGIN + SELECT INBOX + FETCH of the newest 50
            (sequence numbers EXISTS-49:EXISTS, UID FLAGS INTERNALDATE RFC822.SIZE and
            BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]); then LOGOUT, outside the timing.
- ``open``: on an already logged-in connection: SELECT INBOX + the same FETCH.
- ``read``: on a logged-in connection with INBOX selected: UID FETCH of one random UID's
            ``(UID FLAGS BODY.PEEK[])`` (the raw message; the client would still parse it).

Run as a child process (so the client's CPU is measured apart from the benchmark's):

    python -m bench.api_imap < job.json     # prints one JSON line

``job``: host, port, ca_file, user, password, mode, conns, seconds, start_at (time.time()
when the clock starts; connections of ``open``/``read`` are set up before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api_load import LoadResult, machine_cpu_s
from bench.harness import run_child, tree_cpu_s

NEWEST = 50
HEADER_ITEMS = (
    "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])"
)
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n", re.MULTILINE)
REPO = Path(__file__).resolve().parent.parent


class ImapError(RuntimeError):
    pass


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Imap:
    """One connection. ``command`` returns the untagged responses (literals inlined)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tags = itertools.count(1)
        self.received = 0

    @classmethod
    async def connect(cls, host: str, port: int, context: ssl.SSLContext) -> Imap:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname="localhost", limit=1 << 22
        )
        imap = cls(reader, writer)
        greeting = await imap._read_response()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting[:200]!r}")
        return imap

    async def _read_response(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ImapError("connection closed")
            parts.append(line)
            self.received += len(line)
            match = _LITERAL.search(line)
            if match is None:
                return b"".join(parts)
            literal = await self.reader.readexactly(int(match.group(1)))
            self.received += len(literal)
            parts.append(literal)

    async def command(self, text: str) -> list[bytes]:
        tag = f"b{next(self.tags)}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        untagged: list[bytes] = []
        while True:
            response = await self._read_response()
            if response.startswith(tag + b" "):
                if response[len(tag) + 1 :].startswith(b"OK"):
                    return untagged
                raise ImapError(f"{text.split()[0]}: {response[:300]!r}")
            untagged.append(response)

    async def login(self, user: str, password: str) -> None:
        await self.command(f"LOGIN {_quote(user)} {_quote(password)}")

    async def select_inbox(self) -> int:
        """SELECT INBOX; returns EXISTS."""
        for response in await self.command("SELECT INBOX"):
            match = _EXISTS.match(response)
            if match:
                return int(match.group(1))
        raise ImapError("SELECT gave no EXISTS")

    async def newest(self, exists: int) -> int:
        """FETCH the newest 50 by sequence number; returns how many FETCH responses came."""
        first = max(1, exists - NEWEST + 1)
        got = await self.command(f"FETCH {first}:{exists} {HEADER_ITEMS}")
        return sum(1 for r in got if b" FETCH (" in r[:30])

    async def close(self, *, logout: bool) -> None:
        if logout:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                self.writer.write(b"z LOGOUT\r\n")
                await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    last_end: float = 0.0


async def _client(job: dict[str, Any], context: ssl.SSLContext, tally: Tally, no: int) -> None:
    host, port, mode = job["host"], int(job["port"]), job["mode"]
    user, password = job["user"], job["password"]
    expected = min(NEWEST, int(job["messages"]))
    conn: Imap | None = None
    uids: list[int] = []
    if mode in ("open", "read"):
        conn = await Imap.connect(host, port, context)
        await conn.login(user, password)
        if mode == "read":
            await conn.select_inbox()
            for response in await conn.command("UID SEARCH ALL"):
                if response.startswith(b"* SEARCH"):
                    uids = [int(u) for u in response.split()[2:]]
            if not uids:
                raise ImapError("UID SEARCH ALL found nothing")
    rnd = random.Random(1000 + no)
    start_at = float(job["start_at"])
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + float(job["seconds"])
    try:
        while time.monotonic() < deadline:
            if mode == "new":
                started = time.perf_counter()
                fresh = await Imap.connect(host, port, context)
                await fresh.login(user, password)
                got = await fresh.newest(await fresh.select_inbox())
                took = time.perf_counter() - started
                tally.received += fresh.received
                await fresh.close(logout=True)
            else:
                assert conn is not None
                before = conn.received
                started = time.perf_counter()
                if mode == "open":
                    got = await conn.newest(await conn.select_inbox())
                else:
                    fetched = await conn.command(
                        f"UID FETCH {rnd.choice(uids)} (UID FLAGS BODY.PEEK[])"
                    )
                    got = expected if len(fetched) == 1 else -len(fetched)
                took = time.perf_counter() - started
                tally.received += conn.received - before
            if got != expected:
                raise ImapError(f"{mode}: expected {expected} FETCH responses, got {got}")
            tally.latencies.append(took)
            tally.last_end = time.monotonic()
    finally:
        if conn is not None:
            await conn.close(logout=True)


async def run(job: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=job["ca_file"])
    tally = Tally()
    first = time.monotonic() + max(0.0, float(job["start_at"]) - time.time())
    clients = [_client(job, context, tally, i) for i in range(int(job["conns"]))]
    cpu: list[float] = []

    async def cpu_at_start() -> None:
        await asyncio.sleep(max(0.0, first - time.monotonic()))
        cpu.append(time.process_time())

    await asyncio.gather(cpu_at_start(), *clients)
    return {
        "latencies": tally.latencies,
        "received": tally.received,
        "elapsed": tally.last_end - first,
        "cpu_s": time.process_time() - cpu[0],  # this client process, measuring window only
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(job))))


# --- parent side ----------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (like wrk's HdrHistogram, without the bucketing)."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def run_imap(
    *,
    job: dict[str, Any],
    conns: int,
    processes: int,
    seconds: float,
    pg_pid: int | None,
    dovecot_pid: int | None,
) -> LoadResult:
    """``conns`` concurrent clients spread over ``processes`` client processes."""
    processes = max(1, min(processes, conns))
    shares = [conns // processes + (1 if i < conns % processes else 0) for i in range(processes)]
    start_at = time.time() + 2.0 + 0.05 * conns  # child start-up, and connecting first
    jobs = [{**job, "conns": share, "seconds": seconds, "start_at": start_at} for share in shares]
    argv = [sys.executable, "-m", "bench.api_imap"]
    with ThreadPoolExecutor(processes + 1) as pool:
        children = [
            pool.submit(run_child, argv, stdin=json.dumps(j), cwd=REPO, timeout=seconds + 300)
            for j in jobs
        ]
        # server CPU from the moment the clients' clock starts (set-up excluded)
        time.sleep(max(0.0, start_at - time.time()))
        pg0, dc0, window0 = tree_cpu_s(pg_pid), tree_cpu_s(dovecot_pid), time.monotonic()
        all0 = machine_cpu_s()
        runs = [c.result() for c in children]
        all1 = machine_cpu_s()
        pg1, dc1 = tree_cpu_s(pg_pid), tree_cpu_s(dovecot_pid)
        window = time.monotonic() - window0
    latencies: list[float] = []
    received = 0
    rate = client_cpu = 0.0
    for child in runs:
        if child.returncode != 0:
            raise RuntimeError(f"IMAP client failed ({child.returncode}):\n{child.stderr[-4000:]}")
        out = json.loads(child.stdout.strip().splitlines()[-1])
        latencies += out["latencies"]
        received += out["received"]
        rate += len(out["latencies"]) / out["elapsed"]
        client_cpu += out["cpu_s"]
    latencies.sort()
    requests = len(latencies)
    return LoadResult(
        requests=requests, seconds=requests / rate, p50_s=_percentile(latencies, 50),
        p99_s=_percentile(latencies, 99), bytes_per_response=received / max(1, requests),
        errors=0, server_cpu_s=0.0, pg_cpu_s=pg1 - pg0, dovecot_cpu_s=dc1 - dc0,
        client_cpu_s=client_cpu, window_s=window, machine_cpu_s=all1 - all0,
    )  # fmt: skip


if __name__ == "__main__":
    main()
