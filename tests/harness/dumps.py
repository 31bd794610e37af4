"""Whole-database dumps, to prove what is (not) stored in plain text."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PG_DUMP = Path("/usr/lib/postgresql/15/bin/pg_dump")


def pg_dump(dsn: str) -> bytes:
    """pg_dump over the test server's unix socket (the DSN carries host= and port=)."""
    parts = urlsplit(dsn)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    argv = [str(PG_DUMP), "--no-password", "-U", parts.username or "postgres",
            "-d", parts.path.lstrip("/")]  # fmt: skip
    if "host" in query:
        argv += ["-h", query["host"]]
    elif parts.hostname:
        argv += ["-h", parts.hostname]
    if "port" in query or parts.port:
        argv += ["-p", str(query.get("port") or parts.port)]
    return subprocess.run(argv, check=True, capture_output=True, timeout=30).stdout
