"""Building the OAuth2 provider registry and token broker from the settings, once."""

from __future__ import annotations

from mailish.config import Settings
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.oauth.caching import MemoryTokenCache
from mailish.mail.oauth.providers import ProviderRegistry


def broker_from(settings: Settings) -> TokenBroker:
    text = ""
    if settings.oauth_providers is not None:
        text = settings.oauth_providers.get_secret_value()
    elif settings.oauth_providers_file is not None:
        text = settings.oauth_providers_file.read_text()
    registry = ProviderRegistry.parse(text, allow_plaintext=settings.allow_plaintext)
    return TokenBroker(
        registry,
        cache=MemoryTokenCache(),
        margin=settings.oauth_token_margin,
        ca_files=settings.tls_ca_file,
    )
