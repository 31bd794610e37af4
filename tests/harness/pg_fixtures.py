"""PostgreSQL for the tests: one server per session, one fresh database per test.

The server is mailish's own embedded PostgreSQL (fsync off), started in a throwaway folder;
``MAILISH_TEST_DATABASE_URL`` points the suite at an existing server instead. A template
database is migrated once, and each test gets ``CREATE DATABASE ... TEMPLATE`` of it, which
takes tens of milliseconds and isolates tests completely.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mailish.store import connecting, migrating
from mailish.store.embedded import EmbeddedPostgres

TEMPLATE = "mailish_test_template"
_counter = itertools.count()


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class PgServer:
    def __init__(self, admin_dsn: str, embedded: EmbeddedPostgres | None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded
        self.run_id = uuid.uuid4().hex[:8]

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_dsn)

    async def prepare_template(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}_{self.run_id}"')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}_{self.run_id}"')
        finally:
            await conn.close()
        target = await connecting.connect(with_database(self.admin_dsn, self.template))
        try:
            await migrating.migrate(target)
        finally:
            await target.close()

    @property
    def template(self) -> str:
        return f"{TEMPLATE}_{self.run_id}"

    async def fresh_database(self, *, migrated: bool = True) -> str:
        name = f"mailish_test_{self.run_id}_{next(_counter)}"
        conn = await self._admin()
        try:
            if migrated:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.admin_dsn, name)

    async def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    given = os.environ.get("MAILISH_TEST_DATABASE_URL")
    embedded = None
    if given:
        admin = given
    else:
        # Not under pytest's tmp folder: that one is 0700 and PostgreSQL runs as another user.
        root = Path(tempfile.mkdtemp(prefix="mailish-test-pg-"))
        root.chmod(0o755)
        embedded = EmbeddedPostgres(root, durable=False, database="postgres")
        admin = embedded.start()
    server = PgServer(admin, embedded)
    asyncio.run(server.prepare_template())
    try:
        yield server
    finally:
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.root, ignore_errors=True)
        else:
            asyncio.run(_drop_template(server))


async def _drop_template(server: PgServer) -> None:
    await server.drop_database(with_database(server.admin_dsn, server.template))


@pytest.fixture
async def db_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone."""
    dsn = await pg_server.fresh_database()
    yield dsn
    await pg_server.drop_database(dsn)


@pytest.fixture
async def empty_db_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh database with no schema (for migration tests)."""
    dsn = await pg_server.fresh_database(migrated=False)
    yield dsn
    await pg_server.drop_database(dsn)


@pytest.fixture
async def db_pool(db_dsn: str) -> AsyncIterator[connecting.Pool]:
    pool = await connecting.connect_pool(db_dsn, min_size=1, max_size=10)
    yield pool
    await pool.close()
