"""Linking with OAuth2 over the API: a refresh token or an authorization code (PKCE), proven on
the real Dovecot (XOAUTH2, JWTs it validates itself) and SMTP server before anything is stored.
Real uvicorn, PostgreSQL and an HTTPS token endpoint."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from uuid import UUID

import httpx
import pytest

from mailish.config import load_settings
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import OAuthRevoked, TokenBroker
from mailish.services.brokers import broker_from, close_broker
from mailish.services.oauth_login import login_for_account
from mailish.store import accounts
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.oauth_server import OAuthServer, provider_config
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import RunningApi, serve

REDIRECT = "com.example.mail:/oauth"


def servers(dovecot: Dovecot, smtp: SmtpServer) -> dict[str, dict[str, object]]:
    return {
        "imap": {"host": "localhost", "port": dovecot.imaps_port, "security": "tls"},
        "smtp": {"host": "localhost", "port": smtp.tls_port, "security": "tls"},
    }


@pytest.fixture
async def oauth_api(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA, oauth_server: OAuthServer,
    dovecot: Dovecot, smtp_server: SmtpServer,
) -> AsyncIterator[RunningApi]:  # fmt: skip
    """The API with two OAuth providers: ``test`` knows its servers, ``bare`` does not."""
    config = {
        "test": provider_config(oauth_server, **servers(dovecot, smtp_server)),
        "bare": provider_config(oauth_server),
    }
    async with serve(db_dsn, keyring, test_ca, oauth_providers=json.dumps(config)) as running:
        yield running


@contextlib.asynccontextmanager
async def worker_broker(
    server: OAuthServer, ca: LocalCA, keyring: KeyRing, **settings: object
) -> AsyncIterator[TokenBroker]:
    """The broker a worker process builds from its settings, for this token endpoint."""
    broker = broker_from(
        load_settings(
            tls_ca_file=(ca.ca_file,),
            oauth_providers=json.dumps({"test": provider_config(server)}),
            **settings,
        ),
        keyring,
    )
    try:
        yield broker
    finally:
        await close_broker(broker)


async def stored_account(pool: Pool, account_id: str) -> accounts.AccountRecord:
    async with pool.acquire() as conn:
        record = await accounts.get(conn, account_id=UUID(account_id))  # type: ignore[arg-type]
    assert record is not None
    return record


async def provider_of(*, pool: Pool, record: accounts.AccountRecord) -> str:
    async with pool.acquire() as conn:
        provider: str = await conn.fetchval(
            "SELECT provider FROM accounts WHERE id = $1", record.id
        )
    return provider


async def test_refresh_token_links_with_servers_from_the_provider(
    oauth_api: RunningApi, oauth_server: OAuthServer, db_pool: Pool, keyring: KeyRing,
    mail_user: MailUser, test_ca: LocalCA,
) -> None:  # fmt: skip
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    body = {"email": f"{mail_user.name}@example.test", "username": mail_user.name,
            "oauth": {"provider": "test", "refresh_token": refresh}}  # fmt: skip
    async with httpx.AsyncClient(base_url=oauth_api.base, timeout=30) as client:
        answer = await client.post("/v1/accounts", json=body)
        assert answer.status_code == 201, answer.text
        linked = answer.json()
        assert linked["auth"] == "oauth2" and linked["source"] == "oauth_provider"
        assert refresh not in answer.text
        me = await client.get("/v1/account", headers={"Authorization": f"Bearer {linked['token']}"})
        assert me.status_code == 200 and me.json()["status"] == "active"
    record = await stored_account(db_pool, linked["account_id"])
    assert record.auth_kind == "oauth2" and await provider_of(pool=db_pool, record=record) == "test"
    assert record.credentials is not None and refresh.encode() not in record.credentials
    secret = keyring.decrypt(record.id, record.credentials)
    # The endpoint rotates refresh tokens: the one proven at link time replaced the old.
    assert secret["provider"] == "test" and secret["refresh_token"] != refresh
    assert oauth_server.requests["refresh_token"] == 1

    # What a worker does with the row: a login from the stored grant, without a refresh.
    async with worker_broker(oauth_server, test_ca, keyring) as broker:
        login = await login_for_account(db_pool, keyring, broker, record)
    assert login.username == mail_user.name
    assert oauth_server.requests["refresh_token"] == 1


async def test_authorization_code_with_pkce_and_discovered_servers(
    oauth_api: RunningApi, oauth_server: OAuthServer, db_pool: Pool, mail_user: MailUser,
    dovecot: Dovecot, smtp_server: SmtpServer,
) -> None:  # fmt: skip
    verifier = secrets.token_urlsafe(48)
    code = oauth_server.issue_code(mail_user.name, redirect_uri=REDIRECT, code_verifier=verifier)
    oauth = {"provider": "bare", "code": code, "redirect_uri": REDIRECT,
             "code_verifier": verifier}  # fmt: skip
    body = {"email": f"{mail_user.name}@example.test", "username": mail_user.name,
            "oauth": oauth, **servers(dovecot, smtp_server)}  # fmt: skip
    async with httpx.AsyncClient(base_url=oauth_api.base, timeout=30) as client:
        answer = await client.post("/v1/accounts", json=body)
        assert answer.status_code == 201, answer.text
        assert answer.json()["source"] == "request"
        again = await client.post("/v1/accounts", json=body)  # same address: refused first
        assert again.status_code == 409 and again.json()["error"] == "already_linked"
    assert oauth_server.requests["authorization_code"] == 1  # the duplicate spent no code
    record = await stored_account(db_pool, answer.json()["account_id"])
    assert record.auth_kind == "oauth2" and await provider_of(pool=db_pool, record=record) == "bare"


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("revoked", 401, "auth_failed"),
        ("wrong_verifier", 401, "auth_failed"),
        ("unknown_provider", 422, "unknown_provider"),
        ("endpoint_down", 503, "provider_unavailable"),
        ("password_and_oauth", 422, "invalid_request"),
        ("code_without_redirect", 422, "invalid_request"),
        ("neither", 422, "invalid_request"),
        ("short_verifier", 422, "invalid_request"),
    ],
)
async def test_bad_grants_get_a_clear_error_and_store_nothing(
    oauth_api: RunningApi, oauth_server: OAuthServer, db_pool: Pool, mail_user: MailUser,
    case: str, status: int, error: str,
) -> None:  # fmt: skip
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    verifier = secrets.token_urlsafe(48)
    code = oauth_server.issue_code(mail_user.name, redirect_uri=REDIRECT, code_verifier=verifier)
    oauth: dict[str, object] = {"provider": "test", "refresh_token": refresh}
    body: dict[str, object] = {"email": f"{mail_user.name}@example.test", "oauth": oauth}
    if case == "revoked":
        oauth_server.revoke(mail_user.name)
    elif case == "wrong_verifier":
        body["oauth"] = {"provider": "test", "code": code, "redirect_uri": REDIRECT,
                         "code_verifier": secrets.token_urlsafe(48)}  # fmt: skip
    elif case == "unknown_provider":
        oauth["provider"] = "nosuch"
    elif case == "endpoint_down":
        oauth_server.fail_with = [503]
    elif case == "password_and_oauth":
        body["password"] = "also"
    elif case == "code_without_redirect":
        body["oauth"] = {"provider": "test", "code": code}
    elif case == "neither":
        del body["oauth"]
    elif case == "short_verifier":
        body["oauth"] = {"provider": "test", "code": code, "redirect_uri": REDIRECT,
                         "code_verifier": "too-short"}  # fmt: skip
    async with httpx.AsyncClient(base_url=oauth_api.base, timeout=30) as client:
        answer = await client.post("/v1/accounts", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert refresh not in answer.text and code not in answer.text and verifier not in answer.text
    if status == 503:
        assert int(answer.headers["retry-after"]) >= 1
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0


async def test_a_token_dovecot_rejects_fails_the_link_cleanly(
    oauth_api: RunningApi, oauth_server: OAuthServer, db_pool: Pool, mail_user: MailUser,
) -> None:  # fmt: skip
    """The provider grants a token, but for a different mailbox than the address claims."""
    refresh = oauth_server.issue_refresh_token("someone-else")
    body = {"email": f"{mail_user.name}@example.test", "username": mail_user.name,
            "oauth": {"provider": "test", "refresh_token": refresh}}  # fmt: skip
    async with httpx.AsyncClient(base_url=oauth_api.base, timeout=30) as client:
        answer = await client.post("/v1/accounts", json=body)
    assert answer.status_code == 401 and answer.json()["error"] == "auth_failed"
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0


async def test_revoked_grant_is_one_login_error(
    oauth_server: OAuthServer, db_pool: Pool, keyring: KeyRing, test_ca: LocalCA,
    mail_user: MailUser, oauth_api: RunningApi,
) -> None:  # fmt: skip
    """After linking, revoking the grant at the provider makes the next refresh fail with
    ``OAuthRevoked`` (an AuthError: the worker turns it into ``auth_invalid``)."""
    oauth_server.ttl = 1
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    body = {"email": f"{mail_user.name}@example.test", "username": mail_user.name,
            "oauth": {"provider": "test", "refresh_token": refresh}}  # fmt: skip
    async with httpx.AsyncClient(base_url=oauth_api.base, timeout=30) as client:
        answer = await client.post("/v1/accounts", json=body)
    assert answer.status_code == 201, answer.text
    oauth_server.revoke(mail_user.name)
    record = await stored_account(db_pool, answer.json()["account_id"])
    async with worker_broker(oauth_server, test_ca, keyring, oauth_token_margin=5) as broker:
        with pytest.raises(OAuthRevoked):
            await login_for_account(db_pool, keyring, broker, record)
