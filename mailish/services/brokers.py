"""Building the OAuth2 provider registry, token cache and broker from the settings, once per
process. Redis holds the cache when ``MAILISH_REDIS_URL`` is set, the process's memory
otherwise."""

from __future__ import annotations

from mailish.config import Settings
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.oauth.caching import MemoryTokenCache, TokenCache
from mailish.mail.oauth.providers import ProviderRegistry
from mailish.mail.oauth.redis_cache import RedisTokenCache


def registry_from(settings: Settings) -> ProviderRegistry:
    text = ""
    if settings.oauth_providers is not None:
        text = settings.oauth_providers.get_secret_value()
    elif settings.oauth_providers_file is not None:
        text = settings.oauth_providers_file.read_text()
    return ProviderRegistry.parse(text, allow_plaintext=settings.allow_plaintext)


def cache_from(settings: Settings, keyring: KeyRing | None) -> TokenCache:
    margin = settings.oauth_token_margin
    if settings.redis_url is not None and keyring is not None:
        return RedisTokenCache.from_url(
            settings.redis_url.get_secret_value(), keyring, margin=margin
        )
    return MemoryTokenCache(margin=margin)


def broker_from(settings: Settings, keyring: KeyRing | None = None) -> TokenBroker:
    """The process's broker; close it with ``close_broker`` (it owns an HTTP client and maybe
    a Redis connection pool)."""
    return TokenBroker(
        registry_from(settings),
        cache=cache_from(settings, keyring),
        margin=settings.oauth_token_margin,
        ca_files=settings.tls_ca_file,
    )


async def close_broker(broker: TokenBroker) -> None:
    await broker.aclose()
    if isinstance(broker.cache, RedisTokenCache):
        await broker.cache.aclose()
