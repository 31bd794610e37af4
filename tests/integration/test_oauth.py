"""OAuth2 logins end to end: a real HTTPS token endpoint, real PostgreSQL, Dovecot and SMTP.

The token endpoint mints JWTs that Dovecot validates itself, so "the IMAP login works" means
the access token we handed out is genuinely current.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import AuthError
from mailish.domain.ids import AccountId, BucketNo, new_account_id
from mailish.domain.logins import OAuth2Login, PasswordLogin
from mailish.mail import smtp
from mailish.mail.credentials import KeyRing
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.oauth.broker import OAuthRevoked, OAuthUnavailable, TokenBroker, TokenGrant
from mailish.mail.oauth.caching import MemoryTokenCache
from mailish.mail.oauth.providers import Provider, ProviderRegistry
from mailish.services.oauth_login import grant_for, login_for_account, oauth_secret
from mailish.store import accounts, connecting
from mailish.store import credentials as stored
from mailish.store.accounts import AccountRecord
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthServer
from tests.harness.smtp import SmtpServer

TTL = 3
MARGIN = 1.0


@pytest.fixture(autouse=True)
def short_lived_tokens(oauth_server: OAuthServer) -> None:
    oauth_server.ttl = TTL


def make_broker(server: OAuthServer, ca: LocalCA) -> TokenBroker:
    provider = Provider("test", server.token_url, CLIENT_ID, CLIENT_SECRET, ("mail",))
    return TokenBroker(
        ProviderRegistry({"test": provider}), ca_files=(ca.ca_file,), margin=MARGIN,
        cache=MemoryTokenCache(margin=MARGIN), timeout=5,
    )  # fmt: skip


@pytest.fixture
async def broker(oauth_server: OAuthServer, test_ca: LocalCA) -> AsyncIterator[TokenBroker]:
    broker = make_broker(oauth_server, test_ca)
    yield broker
    await broker.aclose()


async def seed(
    pool: Pool, keyring: KeyRing, dovecot: Dovecot, user: str, grant: TokenGrant
) -> AccountRecord:
    account_id = new_account_id()
    secret = oauth_secret("test", grant, username=user)
    imap = {"host": "localhost", "port": dovecot.imaps_port, "security": "tls"}
    async with pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email=f"{user}@example.test", display_name=None,
            bucket=BucketNo(0), provider="test", settings={"imap": imap}, auth_kind="oauth2",
            credentials=keyring.encrypt(account_id, secret), key_id=keyring.primary,
        )  # fmt: skip
        record = await accounts.get(conn, account_id=account_id)
    assert record is not None
    return record


def expired(refresh_token: str) -> TokenGrant:
    return TokenGrant("stale-access-token", 0.0, refresh_token)


async def imap_login(dovecot: Dovecot, ca: LocalCA, login: OAuth2Login | PasswordLogin) -> None:
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    settings = ImapSettings(endpoint, ca_files=(ca.ca_file,), allow_private_hosts=True, timeout=10)
    conn = await ImapConnection.open(settings)
    try:
        await conn.login(login)
    finally:
        await conn.logout()


async def stored_secret(pool: Pool, keyring: KeyRing, account_id: AccountId) -> dict[str, str]:
    async with pool.acquire() as conn:
        row = await stored.load(conn, account_id=account_id)
    assert row is not None
    return keyring.decrypt(account_id, row.blob)


async def test_code_exchange_then_expiry_refreshes_and_logins_keep_working(
    db_pool: Pool, keyring: KeyRing, broker: TokenBroker, oauth_server: OAuthServer,
    dovecot: Dovecot, mail_user: MailUser, smtp_server: SmtpServer, test_ca: LocalCA,
) -> None:  # fmt: skip
    verifier = secrets.token_urlsafe(48)
    code = oauth_server.issue_code(mail_user.name, redirect_uri="app://cb", code_verifier=verifier)
    grant = await grant_for(
        broker, "test", code=code, redirect_uri="app://cb", code_verifier=verifier
    )
    record = await seed(db_pool, keyring, dovecot, mail_user.name, grant)
    first_refresh_token = grant.refresh_token

    login = await login_for_account(db_pool, keyring, broker, record)
    assert isinstance(login, OAuth2Login) and login.username == mail_user.name
    assert oauth_server.requests["refresh_token"] == 0  # the granted token was still fresh
    await imap_login(dovecot, test_ca, login)
    smtp_settings = smtp.SmtpSettings(
        Endpoint("localhost", smtp_server.tls_port, Security.TLS),
        ca_files=(test_ca.ca_file,),
        allow_private_hosts=True,
    )
    await smtp.verify_login(smtp_settings, login)

    await asyncio.sleep(grant.expires_at - MARGIN - time.time() + 0.05)
    again = await login_for_account(db_pool, keyring, broker, record)  # the stale record
    assert isinstance(again, OAuth2Login) and again.access_token != login.access_token
    assert oauth_server.requests["refresh_token"] == 1
    await imap_login(dovecot, test_ca, again)
    secret = await stored_secret(db_pool, keyring, record.id)
    assert secret["refresh_token"] != first_refresh_token  # the rotation was saved
    assert secret["access_token"] == again.access_token

    await login_for_account(db_pool, keyring, broker, record)  # served from the cache
    assert oauth_server.requests["refresh_token"] == 1


async def test_revoked_refresh_token_is_a_permanent_auth_error(
    db_pool: Pool, keyring: KeyRing, broker: TokenBroker, oauth_server: OAuthServer,
    dovecot: Dovecot, mail_user: MailUser,
) -> None:  # fmt: skip
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    record = await seed(db_pool, keyring, dovecot, mail_user.name, expired(refresh))
    oauth_server.revoke(mail_user.name)
    with pytest.raises(OAuthRevoked) as caught:
        await login_for_account(db_pool, keyring, broker, record)
    assert isinstance(caught.value, AuthError)
    assert refresh not in str(caught.value)


async def test_unavailable_endpoint_is_transient_and_changes_nothing(
    db_pool: Pool, keyring: KeyRing, broker: TokenBroker, oauth_server: OAuthServer,
    dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA,
) -> None:  # fmt: skip
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    record = await seed(db_pool, keyring, dovecot, mail_user.name, expired(refresh))
    oauth_server.fail_with = [503]
    with pytest.raises(OAuthUnavailable):
        await login_for_account(db_pool, keyring, broker, record)
    assert (await stored_secret(db_pool, keyring, record.id))["refresh_token"] == refresh
    login = await login_for_account(db_pool, keyring, broker, record)
    assert isinstance(login, OAuth2Login)
    await imap_login(dovecot, test_ca, login)


async def test_password_accounts_get_a_password_login(
    db_pool: Pool, keyring: KeyRing, broker: TokenBroker,
) -> None:  # fmt: skip
    account_id = new_account_id()
    async with db_pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email="p@example.test", display_name=None,
            bucket=BucketNo(0), provider=None, settings={}, auth_kind="password",
            credentials=keyring.encrypt(account_id, {"password": "pw"}), key_id=keyring.primary,
        )  # fmt: skip
        record = await accounts.get(conn, account_id=account_id)
    assert record is not None
    assert await login_for_account(db_pool, keyring, broker, record) == PasswordLogin(
        "p@example.test", "pw"
    )


async def test_two_workers_racing_cause_exactly_one_refresh(
    db_dsn: str, db_pool: Pool, keyring: KeyRing, oauth_server: OAuthServer,
    dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA,
) -> None:  # fmt: skip
    """Two 'processes' (own pool, own broker and cache each), three logins apiece, all at once.
    The endpoint rotates refresh tokens, so a second refresh would even fail invalid_grant."""
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    record = await seed(db_pool, keyring, dovecot, mail_user.name, expired(refresh))
    oauth_server.delay = 0.3  # without the lock, every caller would reach the endpoint
    pools = [await connecting.connect_pool(db_dsn, min_size=1, max_size=3) for _ in range(2)]
    brokers = [make_broker(oauth_server, test_ca) for _ in range(2)]
    try:
        logins = await asyncio.gather(
            *(login_for_account(pool, keyring, broker, record)
              for pool, broker in zip(pools, brokers, strict=True) for _ in range(3))
        )  # fmt: skip
    finally:
        for pool in pools:
            await pool.close()
        for broker in brokers:
            await broker.aclose()
    assert oauth_server.requests["refresh_token"] == 1
    tokens = {login.access_token for login in logins if isinstance(login, OAuth2Login)}
    assert len(tokens) == 1 and len(logins) == 6
    secret = await stored_secret(db_pool, keyring, record.id)
    assert secret["refresh_token"] != refresh and secret["access_token"] in tokens
    oauth_server.delay = 0
    await imap_login(dovecot, test_ca, logins[0])
