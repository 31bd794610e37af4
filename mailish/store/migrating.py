"""Numbered SQL migrations, applied under an advisory lock.

Files in ``migrations/`` are named ``NNNN_description.sql`` and applied in order, each in its
own transaction together with its ``schema_migrations`` row. Concurrent ``mailish migrate`` /
``mailish up`` processes serialise on a session advisory lock, and whoever comes second finds
nothing left to do, so running it twice or at once is safe. An applied file whose text has
changed since is refused: migrations are append-only history.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

from mailish.domain.errors import ConfigError
from mailish.store.connecting import Conn

log = logging.getLogger(__name__)

# pg_advisory_lock key: the first 8 bytes of sha256("mailish.migrations"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"mailish.migrations").digest()[:8], "big", signed=True)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("mailish.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ConfigError(f"migrations are not numbered 1..N without gaps: {versions}")
    return found


async def migrate(conn: Conn, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions this call applied."""
    pending = bundled_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(CREATE_LEDGER)
        applied = {row["version"]: row for row in await conn.fetch(SELECT_APPLIED)}
        for migration in pending:
            done = applied.get(migration.version)
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise ConfigError(
                        f"migration {migration.version:04d}_{migration.name} changed after it"
                        " was applied; add a new migration instead of editing an old one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    INSERT_APPLIED, migration.version, migration.name, migration.checksum
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now


async def current_version(conn: Conn) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def require_current(conn: Conn) -> None:
    """Refuse to run against a database whose schema is older (or newer) than this code."""
    have, want = await current_version(conn), len(bundled_migrations())
    if have < want:
        raise ConfigError(
            f"database schema is at version {have}, this mailish needs {want}: "
            "run `mailish migrate` first"
        )
    if have > want:
        raise ConfigError(
            f"database schema is at version {have}, newer than this mailish ({want}); "
            "upgrade mailish"
        )
