"""Same-machine baseline for "RSS per idle account": a bare aioimaplib IDLE per account.

No peer here holds thousands of IMAP accounts, so the floor to compare the worker with is the
least a Python process can do: one aioimaplib connection per account (implicit TLS, LOGIN,
SELECT INBOX, IDLE) and nothing else - no database, no sync state. Run as its own process so
its memory is its own; reads a JSON job on stdin and prints one JSON line.

    python -m bench.idle_peer < job.json
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from typing import Any

import aioimaplib  # type: ignore[import-untyped]

from bench.scale_rig import raise_open_files_limit, read_usage

CONCURRENCY = 50  # logins in flight at once


async def hold(job: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=job["ca_file"])
    clients: list[aioimaplib.IMAP4_SSL] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def idle(user: str, password: str) -> None:
        async with gate:
            client = aioimaplib.IMAP4_SSL(
                host="localhost", port=job["port"], ssl_context=context, timeout=60
            )
            await client.wait_hello_from_server()
            await client.login(user, password)
            await client.select("INBOX")
            await client.idle_start(timeout=25 * 60)
            clients.append(client)

    users: list[list[str]] = job["users"]
    await idle(*users[0])  # warm: imports, TLS context, first-use allocations
    await asyncio.sleep(1)
    base = read_usage(os.getpid())
    started = time.monotonic()
    await asyncio.gather(*(idle(u, p) for u, p in users[1:]))
    online_s = time.monotonic() - started
    await asyncio.sleep(job.get("settle", 3))
    before = read_usage(os.getpid())
    await asyncio.sleep(job.get("window", 10))
    after = read_usage(os.getpid())
    for client in clients:
        client.idle_done()
    return {
        "accounts": len(clients),
        "online_s": online_s,
        "base_rss_kb": base.rss_kb,
        "idle_rss_kb": after.rss_kb,
        "peak_rss_kb": after.hwm_kb,
        "idle_cpu_pct": 100 * (after.cpu_s - before.cpu_s) / job.get("window", 10),
    }


def main() -> None:
    raise_open_files_limit()
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(hold(job))))


if __name__ == "__main__":
    main()
