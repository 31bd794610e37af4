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
from urllib.parse import urlsplit, urlunsplit

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import claims, connecting, migrating

BUCKETS = 4
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


async def create_database(admin_dsn: str, name: str) -> str:
    """A fresh database ``name`` on the server of ``admin_dsn``, migrated; returns its DSN."""
    conn = await connecting.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    target = await connecting.connect(dsn)
    try:
        await migrating.migrate(target)
    finally:
        await target.close()
    return dsn


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
    policy = ConnectionPolicy(ca_files=(ca_file,), allow_private_hosts=True, timeout=120)
    endpoint = Endpoint("localhost", imaps_port, Security.TLS)
    pool = await connecting.connect_pool(dsn, min_size=1, max_size=10)
    try:
        linked = await link(
            pool,
            LinkRequest(
                email=f"{user}@example.test", password=password, imap=endpoint, smtp=None,
                username=user,
            ),
            keyring=keyring, policy=policy, buckets=BUCKETS,
        )  # fmt: skip
        lease = BucketLease(BucketNo(linked.bucket), OWNER, Epoch(1))
        async with pool.acquire() as conn:
            await claims.claim(conn, lease)
        imap = ImapSettings(endpoint, ca_files=(ca_file,), allow_private_hosts=True, timeout=120)
        login = PasswordLogin(user, password)
        # imported here: the worker package pulls in a lot that the parent never needs
        from mailish.worker.account_sync import AccountSync, SyncTuning

        sync = AccountSync(
            pool=pool, lease=lease, account_id=linked.account_id, imap=imap, login=login,
            tuning=SyncTuning(),
        )  # fmt: skip
        imap_conn = await ImapConnection.open(imap)
        try:
            await imap_conn.login(login)
            session = ImapSession(imap_conn)
            await session.enable_extensions()
            started = time.perf_counter()
            await sync.sync_all(session)
            sync_s = time.perf_counter() - started
        finally:
            await imap_conn.logout()
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
