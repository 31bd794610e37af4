"""The shared access-token cache, in Redis (``MAILISH_REDIS_URL``).

Every api and worker process that points at the same Redis sees a token the moment one of
them refreshed it, so a fleet refreshes each account once per token lifetime instead of once
per process. Correctness never depends on it (the database row and its advisory lock make
refreshes single-flight, see ``services/oauth_login.py``): the cache is only a shortcut.

- **Sealed at rest.** Values are AES-256-GCM blobs from the key ring, bound to their cache key
  (the key's UUIDv5 is the associated data), so a Redis dump or an RDB file reveals no token
  and a value copied under another key does not open.
- **Expires by itself.** Each entry lives until ``margin`` seconds before the token expires
  (``SET ... PX``), so Redis never hands out a token a login would find stale.
- **Fails open.** Redis being down or slow costs a database read, never a login: errors are
  logged once per outage and treated as a miss. Every call is bounded by ``timeout``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from mailish.mail.credentials import CredentialError, KeyRing
from mailish.mail.oauth.caching import DEFAULT_MARGIN, CachedToken, usable

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("5f0f2d2e-6c1c-4a52-9a57-6d61696c6973")


def _binding(key: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, key)


class RedisTokenCache:
    """A ``TokenCache`` over one Redis client (a connection pool, shared by the process)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keyring: KeyRing,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keyring = keyring
        self.margin = margin
        self._clock = clock
        self._failing = False

    @classmethod
    def from_url(
        cls, url: str, keyring: KeyRing, *, margin: float = DEFAULT_MARGIN, timeout: float = 2.0
    ) -> RedisTokenCache:
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )
        return cls(client, keyring, margin=margin)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, key: str) -> CachedToken | None:
        try:
            raw = await self._client.get(key)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return None
        self._up()
        if raw is None:
            return None
        try:
            entry = self._keyring.decrypt(_binding(key), raw)
            token = CachedToken(entry["access_token"], float(entry["expires_at"]))
        except (CredentialError, KeyError, ValueError):
            log.warning("unreadable token cache entry dropped")
            await self.drop(key)
            return None
        return token if usable(token.expires_at, now=self._clock(), margin=self.margin) else None

    async def put(self, key: str, token: CachedToken) -> None:
        ttl = token.expires_at - self.margin - self._clock()
        if ttl <= 0:
            return
        sealed = self._keyring.encrypt(
            _binding(key),
            {"access_token": token.access_token, "expires_at": repr(token.expires_at)},
        )
        try:
            await self._client.set(key, sealed, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        self._up()

    async def drop(self, key: str) -> None:
        try:
            await self._client.delete(key)
        except (RedisError, OSError) as exc:
            self._down(exc)

    def _down(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("token cache unavailable, using the database (%s)", type(exc).__name__)
        self._failing = True

    def _up(self) -> None:
        if self._failing:
            log.info("token cache reachable again")
        self._failing = False
