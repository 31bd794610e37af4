"""Preparing the API benchmark's data: a fresh database, a linked account, one initial sync.

Everything goes through mailish's own code: ``linking.link`` (verifies the IMAP login,
stores the sealed credentials, issues the API token) and ``AccountSync.sync_all`` (the
worker's initial sync) against the benchmark's Dovecot. The full-text indexer is not run:
the listing and message routes do not use it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.linking import create_database, ready_to_sync
from mailish.mail.credentials import KeyRing
from mailish.store import connecting

OWNER = "bench-api-sync"


@dataclass(frozen=True)
class Synced:
    dsn: str
    account_id: uuid.UUID
    token: str
    inbox_id: int
    message_ids: list[int]  # every live message of the INBOX
    sync_s: float
    db_bytes: int


async def sync_inbox(
    *,
    admin_dsn: str,
    database: str,
    imaps_port: int,
    ca_file: Path,
    user: str,
    password: str,
    keyring: KeyRing,
) -> Synced:
    dsn = await create_database(admin_dsn, database)
    pool = await connecting.connect_pool(dsn, min_size=1, max_size=10)
    try:
        async with ready_to_sync(
            pool, imaps_port=imaps_port, ca_file=ca_file, user=user, password=password,
            keyring=keyring, owner=OWNER,
        ) as ready:  # fmt: skip
            started = time.perf_counter()
            await ready.sync.sync_all(ready.session)
            sync_s = time.perf_counter() - started
        linked = ready.linked
        async with pool.acquire() as conn:
            # settle the fresh rows (visibility map, statistics) so that autovacuum of 50k new
            # rows does not land in the middle of a measurement
            await conn.execute("VACUUM (ANALYZE)")
            inbox_id = await conn.fetchval(
                "SELECT id FROM folders WHERE account_id=$1 AND path='INBOX'", linked.account_id
            )
            ids = await conn.fetch(
                "SELECT id FROM messages WHERE folder_id=$1 AND expunged_at IS NULL ORDER BY id",
                inbox_id,
            )
            db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await pool.close()
    return Synced(
        dsn=dsn, account_id=linked.account_id, token=linked.token, inbox_id=int(inbox_id),
        message_ids=[int(r["id"]) for r in ids], sync_s=sync_s, db_bytes=int(db_bytes),
    )  # fmt: skip
