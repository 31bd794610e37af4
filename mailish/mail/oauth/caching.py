"""Access-token caches: keep a token until shortly before it expires.

A cache is only a shortcut in front of the database (which holds the newest access token inside
the encrypted credentials), so losing it costs one database read, never a login. Entries are
keyed by account *and* a fingerprint of the refresh token they came from: replacing an account's
credentials makes its old entries unreachable without any cross-process invalidation.

``MemoryTokenCache`` is per process. A shared cache (Redis, for ``MAILISH_REDIS_URL``) would
implement the same ``TokenCache`` protocol; it is not written yet. Cross-process correctness
never depends on a cache: the database row and its advisory lock provide it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

DEFAULT_MARGIN = 60.0
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: float


def usable(expires_at: float, *, now: float, margin: float) -> bool:
    """A token is handed out only while ``margin`` seconds of life remain (a login, an IDLE
    restart and clock skew must all fit inside what is left)."""
    return now < expires_at - margin


def cache_key(account_id: UUID, refresh_token: str) -> str:
    digest = hashlib.sha256(refresh_token.encode()).hexdigest()[:24]
    return f"mailish:oauth:{account_id}:{digest}"


class TokenCache(Protocol):
    async def get(self, key: str) -> CachedToken | None: ...

    async def put(self, key: str, token: CachedToken) -> None: ...

    async def drop(self, key: str) -> None: ...


class MemoryTokenCache:
    """A dict with expiry; ``get`` only returns tokens that are still ``usable``.

    Bounded: when full, expired entries are purged, then the oldest insertions go.
    Safe within one event loop (no awaits inside operations).
    """

    def __init__(
        self,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.margin = margin
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, CachedToken] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedToken | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not usable(entry.expires_at, now=self._clock(), margin=self.margin):
            del self._entries[key]
            return None
        return entry

    async def put(self, key: str, token: CachedToken) -> None:
        if not usable(token.expires_at, now=self._clock(), margin=self.margin):
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self._max:
            self._evict()
        self._entries[key] = token

    async def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def _evict(self) -> None:
        now = self._clock()
        for key in [
            k
            for k, v in self._entries.items()
            if not usable(v.expires_at, now=now, margin=self.margin)
        ]:
            del self._entries[key]
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
