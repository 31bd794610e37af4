"""The in-process access-token cache: entries vanish ``margin`` seconds before expiry."""

from __future__ import annotations

import uuid

import pytest

from mailish.mail.oauth.caching import CachedToken, MemoryTokenCache, cache_key, usable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("expires_at", "now", "margin", "expected"),
    [(100, 0, 60, True), (100, 40, 60, False), (100, 39.9, 60, True), (100, 100, 0, False)],
)
def test_usable(expires_at: float, now: float, margin: float, expected: bool) -> None:
    assert usable(expires_at, now=now, margin=margin) is expected


async def test_get_until_margin() -> None:
    clock = Clock()
    cache = MemoryTokenCache(margin=10, clock=clock)
    await cache.put("k", CachedToken("t", clock.now + 30))
    assert (await cache.get("k")) == CachedToken("t", clock.now + 30)
    clock.now += 20
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_nearly_expired_tokens_are_not_stored_and_drop_works() -> None:
    clock = Clock()
    cache = MemoryTokenCache(margin=10, clock=clock)
    await cache.put("old", CachedToken("t", clock.now + 5))
    assert await cache.get("old") is None
    await cache.put("k", CachedToken("t", clock.now + 50))
    await cache.drop("k")
    assert await cache.get("k") is None


async def test_bounded() -> None:
    clock = Clock()
    cache = MemoryTokenCache(margin=0, clock=clock, max_entries=3)
    await cache.put("dying", CachedToken("t", clock.now + 1))
    for i in range(3):
        await cache.put(f"k{i}", CachedToken("t", clock.now + 100))
    assert len(cache) == 3
    clock.now += 2
    await cache.put("k3", CachedToken("t", clock.now + 100))
    assert len(cache) == 3
    assert await cache.get("k0") is None  # oldest insertion went once expired ones were gone
    assert await cache.get("k3") is not None


def test_cache_key_hides_the_refresh_token_and_changes_with_it() -> None:
    account = uuid.uuid4()
    key = cache_key(account, "rt-secret")
    assert "rt-secret" not in key and str(account) in key
    assert key != cache_key(account, "rt-other")
