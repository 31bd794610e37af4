"""The provider registry: built-ins need client credentials; custom providers need a URL."""

from __future__ import annotations

import pytest

from mailish.domain.errors import ConfigError
from mailish.mail.oauth.providers import BUILTIN, ProviderRegistry


def test_builtins_have_https_endpoints_and_mail_scopes() -> None:
    assert set(BUILTIN) == {"google", "microsoft", "yahoo", "mailru", "yandex"}
    for provider in BUILTIN.values():
        assert provider.token_url.startswith("https://")
        assert provider.scopes
        assert provider.imap is not None and provider.smtp is not None


def test_configured_builtin_keeps_endpoint_and_takes_credentials() -> None:
    registry = ProviderRegistry.parse('{"google": {"client_id": "id", "client_secret": "s3"}}')
    google = registry.get("google")
    assert google.token_url == BUILTIN["google"].token_url
    assert (google.client_id, google.client_secret) == ("id", "s3")
    assert "s3" not in repr(google) and "s3" not in repr(registry)
    assert "microsoft" not in registry


def test_custom_provider() -> None:
    registry = ProviderRegistry.parse(
        '{"corp": {"token_url": "https://sso.corp.test/token", "client_id": "c",'
        ' "scopes": "mail offline", "imap": {"host": "imap.corp.test", "port": 993,'
        ' "security": "tls"}}}'
    )
    corp = registry.get("corp")
    assert corp.scope == "mail offline"
    assert corp.imap is not None and corp.imap.host == "imap.corp.test"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"corp": {"client_id": "c"}}', "token_url"),
        ('{"google": {}}', "client_id"),
        ('{"corp": {"token_url": "http://x.test/t", "client_id": "c"}}', "https"),
        ('{"corp": {"token_url": "ftp://x.test/t", "client_id": "c"}}', "https"),
        ("[1]", "JSON object"),
        ("{nope", "not valid JSON"),
        ('{"google": 3}', "expected an object"),
    ],
)
def test_invalid_configuration(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProviderRegistry.parse(text)


def test_plaintext_token_url_only_when_allowed() -> None:
    text = '{"corp": {"token_url": "http://localhost:9/t", "client_id": "c"}}'
    assert "corp" in ProviderRegistry.parse(text, allow_plaintext=True)


def test_unknown_provider_and_empty_config() -> None:
    with pytest.raises(ConfigError, match="not configured"):
        ProviderRegistry.parse("  ").get("google")
