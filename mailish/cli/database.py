"""Resolving the database: the configured URL, or the embedded PostgreSQL for local runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mailish.config import Settings
from mailish.domain.ids import Epoch
from mailish.store import claims, connecting, migrating
from mailish.store.connecting import Pool
from mailish.store.embedded import EmbeddedPostgres


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """Yield a DSN; start (and finally stop) the embedded server when no URL is configured."""
    dsn = settings.database_dsn()
    if dsn is not None:
        yield dsn
        return
    root = settings.data_dir / "pg"
    shared = EmbeddedPostgres.running_dsn(root)
    if shared is not None:  # `mailish up` is running: use its server
        yield shared
        return
    server = EmbeddedPostgres(root, bin_dir=settings.pg_bin_dir)
    try:
        yield await asyncio.to_thread(server.start)
    finally:
        await asyncio.to_thread(server.stop)


async def migrate_to_latest(dsn: str, settings: Settings) -> list[int]:
    loop = asyncio.get_running_loop()
    await connecting.wait_until_reachable(
        dsn,
        deadline=loop.time() + settings.db_connect_timeout,
        connect_timeout=settings.db_connect_timeout,
    )
    conn = await connecting.connect(dsn, connect_timeout=settings.db_connect_timeout)
    try:
        return await migrating.migrate(conn)
    finally:
        await conn.close()


async def next_local_epoch(pool: Pool) -> Epoch:
    """One above every epoch ever claimed: a newly started local worker fences older ones."""
    async with pool.acquire() as conn:
        return Epoch(await claims.highest_epoch(conn) + 1)
