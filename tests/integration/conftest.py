"""Fixtures for sync tests: a key ring, a connection policy trusting the test CA, and an
account linked to a fresh Dovecot user."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing, new_key
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import claims
from mailish.store.connecting import Pool
from mailish.worker.account_sync import AccountSync, SyncTuning
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser

BUCKETS = 4


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing({"k1": new_key()}, "k1")


@pytest.fixture
def policy(test_ca: LocalCA) -> ConnectionPolicy:
    return ConnectionPolicy(ca_files=(test_ca.ca_file,), allow_private_hosts=True, timeout=15)


@dataclass
class Linked:
    account_id: object
    token: str
    lease: BucketLease
    user: MailUser
    imap: ImapSettings

    def sync(self, pool: Pool, **tuning: object) -> AccountSync:
        return AccountSync(
            pool=pool,
            lease=self.lease,
            account_id=self.account_id,  # type: ignore[arg-type]
            imap=self.imap,
            login=PasswordLogin(self.user.name, self.user.password),
            tuning=SyncTuning(**tuning),  # type: ignore[arg-type]
        )


@pytest.fixture
async def linked(
    db_pool: Pool, dovecot: Dovecot, mail_user: MailUser, keyring: KeyRing,
    policy: ConnectionPolicy,
) -> Linked:  # fmt: skip
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    result = await link(
        db_pool,
        LinkRequest(email=f"{mail_user.name}@example.test", password=mail_user.password,
                    imap=endpoint, smtp=None, username=mail_user.name),
        keyring=keyring, policy=policy, buckets=BUCKETS,
    )  # fmt: skip
    lease = BucketLease(BucketNo(result.bucket), "test-worker", Epoch(1))
    async with db_pool.acquire() as conn:
        await claims.claim(conn, lease)
    imap = ImapSettings(endpoint, ca_files=policy.ca_files, allow_private_hosts=True, timeout=15)
    return Linked(result.account_id, result.token, lease, mail_user, imap)


@pytest.fixture
async def session(linked: Linked) -> AsyncIterator[ImapSession]:
    conn = await ImapConnection.open(linked.imap)
    await conn.login(PasswordLogin(linked.user.name, linked.user.password))
    session = ImapSession(conn)
    await session.enable_extensions()
    yield session
    await conn.logout()


@dataclass
class RunningApi:
    base: str


@contextlib.asynccontextmanager
async def serve(
    db_dsn: str, keyring: KeyRing, ca: LocalCA, **overrides: object
) -> AsyncIterator[RunningApi]:
    """The real app under a real uvicorn on a free loopback port."""
    import asyncio
    import socket

    import uvicorn

    from mailish.api.app import create_app
    from mailish.config import load_settings

    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP,
    # and without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, object] = {
        "api_port": port, "tls_ca_file": (ca.ca_file,), "allow_private_hosts": True,
        "api_burst": 1000, **overrides,
    }  # fmt: skip
    app = create_app(load_settings(**options), dsn=db_dsn, keyring=keyring)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)
        yield RunningApi(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def api(db_dsn: str, keyring: KeyRing, test_ca: LocalCA) -> AsyncIterator[RunningApi]:
    async with serve(db_dsn, keyring, test_ca) as running:
        yield running
