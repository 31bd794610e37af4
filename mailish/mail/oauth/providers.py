"""Which OAuth2 providers we can refresh tokens with, and how to reach their token endpoints.

Built-in providers carry endpoints and the scopes IMAP and SMTP need; the operator supplies the
client credentials (and may override anything) through configuration, and may add custom
providers with their own token endpoint. A provider without a client id is not usable, so the
registry only ever holds providers that were configured.

Configuration (``MAILISH_OAUTH_PROVIDERS`` or the file it names) is JSON::

    {"google": {"client_id": "...", "client_secret": "..."},
     "corp":   {"token_url": "https://sso.corp/token", "client_id": "...",
                "client_secret": "...", "scopes": ["mail"]}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    token_url: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ()
    authorize_url: str | None = None
    imap: Endpoint | None = None
    smtp: Endpoint | None = None

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


def _tls(host: str, port: int = 993) -> Endpoint:
    return Endpoint(host, port, Security.TLS)


BUILTIN: Mapping[str, Provider] = {
    "google": Provider(
        "google",
        "https://oauth2.googleapis.com/token",
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        scopes=("https://mail.google.com/",),
        imap=_tls("imap.gmail.com"),
        smtp=_tls("smtp.gmail.com", 465),
    ),
    "microsoft": Provider(
        "microsoft",
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        scopes=(
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
        ),
        imap=_tls("outlook.office365.com"),
        smtp=Endpoint("smtp.office365.com", 587, Security.STARTTLS),
    ),
    "yahoo": Provider(
        "yahoo",
        "https://api.login.yahoo.com/oauth2/get_token",
        authorize_url="https://api.login.yahoo.com/oauth2/request_auth",
        scopes=("mail-w",),
        imap=_tls("imap.mail.yahoo.com"),
        smtp=_tls("smtp.mail.yahoo.com", 465),
    ),
    "mailru": Provider(
        "mailru",
        "https://oauth.mail.ru/token",
        authorize_url="https://oauth.mail.ru/login",
        scopes=("mail.imap",),
        imap=_tls("imap.mail.ru"),
        smtp=_tls("smtp.mail.ru", 465),
    ),
    "yandex": Provider(
        "yandex",
        "https://oauth.yandex.com/token",
        authorize_url="https://oauth.yandex.com/authorize",
        scopes=("mail:imap_full", "mail:smtp"),
        imap=_tls("imap.yandex.com"),
        smtp=_tls("smtp.yandex.com", 465),
    ),
}


def _endpoint(name: str, key: str, value: Any) -> Endpoint | None:
    if value is None:
        return None
    try:
        return Endpoint.from_json(value)
    except ValueError as exc:
        raise ConfigError(f"OAuth provider {name!r}: invalid {key} endpoint ({exc})") from None


def _check_url(name: str, url: str, *, allow_plaintext: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"OAuth provider {name!r}: token_url must be an https:// URL")
    if parts.scheme == "http" and not allow_plaintext:
        raise ConfigError(
            f"OAuth provider {name!r}: token_url must use https (dev only: MAILISH_ALLOW_PLAINTEXT)"
        )


def _configured(name: str, entry: Mapping[str, Any], *, allow_plaintext: bool) -> Provider:
    base = BUILTIN.get(name)
    if base is None and "token_url" not in entry:
        raise ConfigError(f"OAuth provider {name!r} is not built in; give it a token_url")
    provider = base or Provider(name, token_url=str(entry["token_url"]))
    scopes = entry.get("scopes", provider.scopes)
    if isinstance(scopes, str):
        scopes = scopes.split()
    provider = replace(
        provider,
        token_url=str(entry.get("token_url", provider.token_url)),
        authorize_url=entry.get("authorize_url", provider.authorize_url),
        client_id=str(entry.get("client_id", "")),
        client_secret=str(entry.get("client_secret", "")),
        scopes=tuple(str(s) for s in scopes),
        imap=_endpoint(name, "imap", entry["imap"]) if "imap" in entry else provider.imap,
        smtp=_endpoint(name, "smtp", entry["smtp"]) if "smtp" in entry else provider.smtp,
    )
    if not provider.client_id:
        raise ConfigError(f"OAuth provider {name!r} needs a client_id")
    _check_url(name, provider.token_url, allow_plaintext=allow_plaintext)
    return provider


@dataclass(frozen=True)
class ProviderRegistry:
    """The configured providers by name; ``get`` is what account secrets are resolved with."""

    providers: Mapping[str, Provider] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ProviderRegistry({sorted(self.providers)!r})"

    def get(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise ConfigError(f"OAuth provider {name!r} is not configured") from None

    def __contains__(self, name: object) -> bool:
        return name in self.providers

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, allow_plaintext: bool = False
    ) -> ProviderRegistry:
        providers: dict[str, Provider] = {}
        for name, entry in config.items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"OAuth provider {name!r}: expected an object")
            providers[name] = _configured(name, entry, allow_plaintext=allow_plaintext)
        return cls(providers)

    @classmethod
    def parse(cls, text: str, *, allow_plaintext: bool = False) -> ProviderRegistry:
        """JSON text (the setting's value or a mounted file); empty text means no providers."""
        if not text.strip():
            return cls({})
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"MAILISH_OAUTH_PROVIDERS is not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise ConfigError("MAILISH_OAUTH_PROVIDERS must be a JSON object")
        return cls.from_config(config, allow_plaintext=allow_plaintext)
