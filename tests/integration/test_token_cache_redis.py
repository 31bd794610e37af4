"""The shared access-token cache against a real redis-server: sealed values bound to their key,
entries that expire by themselves, sharing between processes, and a Redis outage costing a
database read rather than a login."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from mailish.domain.logins import OAuth2Login
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.oauth.caching import CachedToken, cache_key
from mailish.mail.oauth.providers import ProviderRegistry
from mailish.mail.oauth.redis_cache import RedisTokenCache
from mailish.services.oauth_login import login_for_account
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.oauth_server import OAuthServer, provider_config
from tests.harness.redis_server import RedisServer
from tests.integration.test_oauth import expired, imap_login, seed

MARGIN = 10.0


@pytest.fixture
async def cache(redis_server: RedisServer, keyring: KeyRing) -> AsyncIterator[RedisTokenCache]:
    cache = RedisTokenCache.from_url(redis_server.url, keyring, margin=MARGIN, timeout=0.5)
    yield cache
    await cache.aclose()


def key() -> str:
    return cache_key(uuid.uuid4(), "rt-" + uuid.uuid4().hex)


async def test_a_token_is_sealed_and_expires_before_the_token_does(
    cache: RedisTokenCache, redis_server: RedisServer
) -> None:
    k = key()
    token = CachedToken("access-canary-" + uuid.uuid4().hex, time.time() + 100)
    await cache.put(k, token)
    assert await cache.get(k) == token
    assert token.access_token.encode() not in redis_server.snapshot()
    ttl_ms = int(redis_server.command("PTTL", k).lstrip(b":"))
    assert 85_000 < ttl_ms <= 90_000  # 100 s of life minus the 10 s margin

    short = key()
    await cache.put(short, CachedToken("nearly-dead", time.time() + MARGIN - 1))
    assert redis_server.command("EXISTS", short) == b":0"  # never stored


async def test_a_value_copied_under_another_key_does_not_open(
    cache: RedisTokenCache, redis_server: RedisServer
) -> None:
    mine, theirs = key(), key()
    await cache.put(mine, CachedToken("mine", time.time() + 100))
    redis_server.command("COPY", mine, theirs)
    assert await cache.get(theirs) is None
    assert redis_server.command("EXISTS", theirs) == b":0"  # the bad entry was dropped
    assert await cache.get(mine) is not None


async def test_two_processes_share_one_refresh_and_an_outage_costs_a_database_read(
    db_pool: Pool, keyring: KeyRing, redis_server: RedisServer, oauth_server: OAuthServer,
    dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA,
) -> None:  # fmt: skip
    registry = ProviderRegistry.from_config({"test": provider_config(oauth_server)})
    refresh = oauth_server.issue_refresh_token(mail_user.name)
    record = await seed(db_pool, keyring, dovecot, mail_user.name, expired(refresh))
    caches = [
        RedisTokenCache.from_url(redis_server.url, keyring, margin=MARGIN, timeout=0.5)
        for _ in range(2)
    ]
    brokers = [
        TokenBroker(registry, cache=c, margin=MARGIN, ca_files=(test_ca.ca_file,), timeout=5)
        for c in caches
    ]
    try:
        first = await login_for_account(db_pool, keyring, brokers[0], record)
        assert oauth_server.requests["refresh_token"] == 1
        # The other process finds the new token in Redis under the refresh token it holds
        # after re-reading the row (the endpoint rotated it).
        async with db_pool.acquire() as conn:
            from mailish.store import accounts

            current = await accounts.get(conn, account_id=record.id)
        assert current is not None and current.credentials is not None
        rotated = keyring.decrypt(record.id, current.credentials)["refresh_token"]
        hit = await caches[1].get(cache_key(record.id, rotated))
        assert isinstance(first, OAuth2Login) and hit is not None
        assert hit.access_token == first.access_token

        redis_server.pause()  # unreachable: every call must give up within its timeout
        try:
            started = time.monotonic()
            again = await login_for_account(db_pool, keyring, brokers[1], current)
            assert time.monotonic() - started < 3
        finally:
            redis_server.resume()
        assert isinstance(again, OAuth2Login) and again.access_token == first.access_token
        assert oauth_server.requests["refresh_token"] == 1  # from the row, not the provider
        await imap_login(dovecot, test_ca, again)
        await asyncio.sleep(0)
        assert await caches[1].get(cache_key(record.id, rotated)) is not None  # back in use
    finally:
        for broker, c in zip(brokers, caches, strict=True):
            await broker.aclose()
            await c.aclose()
