"""What the sync benchmarks share: a fresh migrated database, and one Dovecot account linked
with its bucket claimed, an ``AccountSync`` for it and an open, logged-in IMAP session."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing
from mailish.mail.imap.connection import ImapConnection
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import Linked, LinkRequest, link
from mailish.store import claims, connecting, migrating
from mailish.store.connecting import Pool

if TYPE_CHECKING:
    from mailish.worker.account_sync import AccountSync

BUCKETS = 4


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


@dataclass
class Ready:
    linked: Linked
    sync: AccountSync
    session: ImapSession


@contextlib.asynccontextmanager
async def ready_to_sync(
    pool: Pool,
    *,
    imaps_port: int,
    ca_file: Path,
    user: str,
    password: str,
    keyring: KeyRing,
    owner: str,
) -> AsyncIterator[Ready]:
    """Link ``user`` (password login over implicit TLS), claim its bucket at epoch 1 and open
    the session the sync runs on; the session is logged out when the block ends."""
    # imported here: the worker package pulls in a lot that a parent process never needs
    from mailish.worker.account_sync import AccountSync, SyncTuning

    policy = ConnectionPolicy(ca_files=(ca_file,), allow_private_hosts=True, timeout=120)
    endpoint = Endpoint("localhost", imaps_port, Security.TLS)
    linked = await link(
        pool,
        LinkRequest(email=f"{user}@example.test", password=password, imap=endpoint, smtp=None,
                    username=user),
        keyring=keyring, policy=policy, buckets=BUCKETS,
    )  # fmt: skip
    lease = BucketLease(BucketNo(linked.bucket), owner, Epoch(1))
    async with pool.acquire() as conn:
        await claims.claim(conn, lease)
    imap, login = policy.imap(endpoint), PasswordLogin(user, password)
    sync = AccountSync(
        pool=pool, lease=lease, account_id=linked.account_id, imap=imap, login=login,
        tuning=SyncTuning(),
    )  # fmt: skip
    imap_conn = await ImapConnection.open(imap)
    try:
        await imap_conn.login(login)
        session = ImapSession(imap_conn)
        await session.enable_extensions()
        yield Ready(linked, sync, session)
    finally:
        await imap_conn.logout()
