"""Logins for the worker and the API: a fresh OAuth2 access token, refreshed once at a time.

Order of lookups for an ``oauth2`` account (secret: ``provider``, ``refresh_token`` and the
last ``access_token``/``expires_at``)::

    process/Redis cache ──hit──▶ OAuth2Login
          │ miss
          ▼
    BEGIN; advisory lock (per account, across processes)
          ▼
    re-read the row ──access token still usable──▶ COMMIT ▶ OAuth2Login
          │ expired
          ▼
    token endpoint (refresh) ▶ seal {new access token, rotated refresh token} ▶ CAS write
          ▼
    COMMIT ▶ cache ▶ OAuth2Login

Because the newest access token is sealed into the row under the lock, a second worker that
waited for the lock finds it and does not call the provider: two workers racing cause exactly
one refresh, and a rotated refresh token is never lost to a concurrent writer. The transaction
is held across one bounded HTTP call (the broker's timeout); that is the price of the guarantee.
A refresh that the provider rotates but whose COMMIT then fails loses the new refresh token;
providers that rotate (Microsoft, Yahoo) keep the previous token valid for a grace period.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from mailish.domain.errors import TransientError
from mailish.domain.ids import AccountId
from mailish.domain.logins import Login, OAuth2Login, PasswordLogin
from mailish.mail.credentials import CredentialError, KeyRing
from mailish.mail.oauth.broker import TokenBroker, TokenGrant
from mailish.mail.oauth.caching import CachedToken, cache_key, usable
from mailish.store import credentials
from mailish.store.accounts import AccountRecord
from mailish.store.connecting import Pool

OAUTH2 = "oauth2"


def oauth_secret(
    provider: str, grant: TokenGrant, *, username: str | None = None
) -> dict[str, str]:
    """The secret sealed for a newly linked (or re-authorised) OAuth2 account."""
    if grant.refresh_token is None:
        raise CredentialError(f"OAuth {provider}: no refresh token granted (offline access?)")
    secret = {
        "provider": provider,
        "refresh_token": grant.refresh_token,
        "access_token": grant.access_token,
        "expires_at": repr(grant.expires_at),
    }
    if username:
        secret["username"] = username
    return secret


async def grant_for(
    broker: TokenBroker,
    provider: str,
    *,
    refresh_token: str | None = None,
    code: str | None = None,
    redirect_uri: str | None = None,
    code_verifier: str | None = None,
) -> TokenGrant:
    """What POST /v1/accounts does with ``oauth``: exchange a code, or prove a refresh token
    works; the result goes through ``oauth_secret`` into the new row."""
    if code is not None:
        if not redirect_uri:
            raise CredentialError("an authorization code needs its redirect_uri")
        return await broker.exchange_code(
            provider, code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
    if not refresh_token:
        raise CredentialError("give either a refresh_token or an authorization code")
    grant = await broker.refresh(provider, refresh_token)
    if grant.refresh_token is None:  # not rotated: the one we were given stays valid
        grant = TokenGrant(grant.access_token, grant.expires_at, refresh_token, grant.scope)
    return grant


def _stored_token(secret: Mapping[str, str]) -> CachedToken | None:
    access = secret.get("access_token")
    try:
        expires_at = float(secret.get("expires_at", ""))
    except ValueError:
        return None
    return CachedToken(access, expires_at) if access else None


def _static_login(secret: Mapping[str, str], username: str) -> Login:
    if "access_token" in secret:
        return OAuth2Login(username, secret["access_token"])
    if "password" not in secret:
        raise CredentialError("stored credentials hold neither a password nor a token")
    return PasswordLogin(username, secret["password"])


def stored_login(keyring: KeyRing, record: AccountRecord) -> Login:
    """The login as stored, without a refresh: a password, or the last access token."""
    if record.credentials is None:
        raise CredentialError("account has no stored credentials")
    secret = keyring.decrypt(record.id, record.credentials)
    return _static_login(secret, secret.get("username") or record.email)


async def login_for_account(
    pool: Pool, keyring: KeyRing, broker: TokenBroker, record: AccountRecord
) -> Login:
    """The login to use now. Raises ``AuthError`` (``OAuthRevoked``) when the grant is dead,
    ``CredentialError`` when the row cannot be opened, ``TransientError`` to retry later."""
    if record.credentials is None:
        raise CredentialError("account has no stored credentials")
    secret = keyring.decrypt(record.id, record.credentials)
    username = secret.get("username") or record.email
    if record.auth_kind != OAUTH2:
        return _static_login(secret, username)
    refresh_token = secret.get("refresh_token")
    if not refresh_token:
        raise CredentialError("OAuth2 account has no refresh token")
    key = cache_key(record.id, refresh_token)
    hit = await broker.cache.get(key)
    if hit is None:
        hit = await fresh_token(pool, keyring, broker, account_id=record.id)
        await broker.cache.put(key, hit)
    return OAuth2Login(username, hit.access_token)


async def fresh_token(
    pool: Pool, keyring: KeyRing, broker: TokenBroker, *, account_id: AccountId
) -> CachedToken:
    """Check the row, refresh if needed, and save, all under the account's advisory lock."""
    async with pool.acquire() as conn, conn.transaction():
        await credentials.lock_account(conn, account_id=account_id)
        stored = await credentials.load(conn, account_id=account_id)
        if stored is None:
            raise CredentialError("account has no stored credentials")
        secret = keyring.decrypt(account_id, stored.blob)
        current = _stored_token(secret)
        if current and usable(current.expires_at, now=time.time(), margin=broker.margin):
            token = current
        else:
            if "provider" not in secret or "refresh_token" not in secret:
                raise CredentialError("OAuth2 credentials lack a provider or refresh token")
            grant = await broker.refresh(secret["provider"], secret["refresh_token"])
            updated = {
                **secret,
                "access_token": grant.access_token,
                "expires_at": repr(grant.expires_at),
                "refresh_token": grant.refresh_token or secret["refresh_token"],
            }
            saved = await credentials.compare_and_set(
                conn, account_id=account_id, expected=stored.blob,
                blob=keyring.encrypt(account_id, updated), key_id=keyring.primary,
            )  # fmt: skip
            if not saved:  # only a writer that skipped the lock can get here
                raise TransientError("credentials changed during a token refresh", delay=1.0)
            token = CachedToken(grant.access_token, grant.expires_at)
            secret = updated
    await broker.cache.put(cache_key(account_id, secret["refresh_token"]), token)
    return token


async def store_credentials(
    pool: Pool, keyring: KeyRing, *, account_id: AccountId, secret: Mapping[str, str],
    auth_kind: str,
) -> bool:  # fmt: skip
    """PUT /v1/account/credentials: seal and replace under the lock (so an in-flight refresh
    cannot overwrite them), and reactivate the account. False if the account does not exist."""
    blob = keyring.encrypt(account_id, secret)
    async with pool.acquire() as conn, conn.transaction():
        await credentials.lock_account(conn, account_id=account_id)
        return await credentials.replace(
            conn, account_id=account_id, blob=blob, key_id=keyring.primary, auth_kind=auth_kind
        )
