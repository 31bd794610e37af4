"""Migrations against a real PostgreSQL: idempotent, concurrent-safe, append-only."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mailish.domain.errors import ConfigError
from mailish.store import connecting, migrating

EXPECTED_TABLES = {
    "accounts", "api_tokens", "folders", "messages", "message_blobs", "attachments", "uploads",
    "operations", "outbox", "changes", "bucket_claims", "push_subscriptions",
    "schema_migrations",
}  # fmt: skip


async def test_migrate_creates_the_schema_once(empty_db_dsn: str) -> None:
    conn = await connecting.connect(empty_db_dsn)
    try:
        assert await migrating.current_version(conn) == 0
        applied = await migrating.migrate(conn)
        assert applied == [m.version for m in migrating.bundled_migrations()]
        assert await migrating.migrate(conn) == []
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert tables >= EXPECTED_TABLES
        assert await migrating.current_version(conn) == len(applied)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_version_exactly_once(empty_db_dsn: str) -> None:
    conns = [await connecting.connect(empty_db_dsn) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrating.migrate(c) for c in conns))
        applied = [v for result in results for v in result]
        assert sorted(applied) == [m.version for m in migrating.bundled_migrations()]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert len(rows) == len(applied)
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_migration_is_refused(empty_db_dsn: str) -> None:
    conn = await connecting.connect(empty_db_dsn)
    try:
        await migrating.migrate(conn)
        edited = [
            dataclasses.replace(m, sql=m.sql + "\n-- edited\n")
            for m in migrating.bundled_migrations()
        ]
        with pytest.raises(ConfigError, match="changed after it was applied"):
            await migrating.migrate(conn, edited)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_no_trace(empty_db_dsn: str) -> None:
    conn = await connecting.connect(empty_db_dsn)
    try:
        broken = [*migrating.bundled_migrations()]
        broken.append(
            migrating.Migration(
                len(broken) + 1, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;"
            )
        )
        with pytest.raises(Exception, match="division by zero"):
            await migrating.migrate(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await migrating.current_version(conn) == len(broken) - 1
        # the lock was released: a later run proceeds
        assert await migrating.migrate(conn) == []
    finally:
        await conn.close()
