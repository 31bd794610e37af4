"""The token endpoint client: authorization-code exchange (with PKCE) and refresh.

Errors are classified by what the caller should do, not by HTTP status:

- ``OAuthRevoked`` (an ``AuthError``): ``invalid_grant`` — the refresh token or code is dead
  (revoked, expired, already rotated away). Retrying cannot help; the account needs the user.
- ``OAuthUnavailable`` (a ``TransientError``): 5xx, 429, timeouts, connection failures,
  ``temporarily_unavailable``. Try again later.
- ``OAuthRejected`` (a ``PermanentError``): the endpoint refused *our* request
  (``invalid_client``, ``unauthorized_client``, a malformed answer). An operator must fix the
  configuration; the user's credentials are not to blame, so this is not an ``AuthError``.

Responses are read with a size bound, TLS is always verified (extra CA files are added to the
system store), redirects are not followed, and no token or response body is ever logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mailish.domain.errors import AuthError, PermanentError, TransientError
from mailish.mail.oauth.caching import DEFAULT_MARGIN, MemoryTokenCache, TokenCache
from mailish.mail.oauth.providers import Provider, ProviderRegistry
from mailish.mail.tls import client_context, describe_tls_failure, tls_cause

log = logging.getLogger(__name__)

MAX_RESPONSE = 64 * 1024
BEARER = "bearer"
DEFAULT_EXPIRES_IN = 3600
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})


class OAuthRevoked(AuthError):
    """The grant is gone: the account must be re-authorised by its user."""


class OAuthUnavailable(TransientError):
    """The token endpoint could not answer now."""


class OAuthRejected(PermanentError):
    """The token endpoint refused our client or answered nonsense: a configuration problem."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a token endpoint granted. ``refresh_token`` is None when the old one stays valid."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None


def classify_error(status: int, body: Mapping[str, Any] | None, *, provider: str) -> Exception:
    """Map a non-200 token endpoint answer to our error hierarchy (pure, table-tested)."""
    code = str(body.get("error", "")) if body else ""
    where = f"OAuth {provider}: token endpoint answered {status}"
    if code == "invalid_grant":
        return OAuthRevoked(f"{where} invalid_grant (authorization revoked or expired)")
    if status >= 500 or status == 429 or code in TRANSIENT_ERRORS:
        return OAuthUnavailable(f"{where} {code}".rstrip(), delay=30.0 if status == 429 else 5.0)
    return OAuthRejected(f"{where} {code or 'without an error code'}")


def parse_grant(body: Mapping[str, Any], *, now: float, provider: str) -> TokenGrant:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthRejected(f"OAuth {provider}: token response has no access_token")
    kind = str(body.get("token_type", BEARER)).lower()
    if kind != BEARER:
        raise OAuthRejected(f"OAuth {provider}: unsupported token_type {kind!r}")
    try:
        expires_in = float(body.get("expires_in", DEFAULT_EXPIRES_IN))
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    refresh = body.get("refresh_token")
    scope = body.get("scope")
    return TokenGrant(
        access_token=access,
        expires_at=now + max(expires_in, 0.0),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        scope=scope if isinstance(scope, str) else None,
    )


class TokenBroker:
    """Talks to providers' token endpoints. One per process; shares one httpx client.

    It also carries what every caller needs alongside: the configured ``providers``, the
    access-token ``cache`` and the ``margin`` (seconds before expiry at which a token is no
    longer handed out). ``client`` is injected in tests or built from ``ca_files``.
    """

    def __init__(
        self,
        providers: ProviderRegistry,
        *,
        cache: TokenCache | None = None,
        margin: float = DEFAULT_MARGIN,
        client: httpx.AsyncClient | None = None,
        ca_files: Sequence[Path] = (),
        timeout: float = 15.0,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            verify=client_context(ca_files),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": "mailish"},
        )
        self.max_response = max_response
        self.providers = providers
        self.margin = margin
        self.cache: TokenCache = cache if cache is not None else MemoryTokenCache(margin=margin)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    def provider(self, provider: Provider | str) -> Provider:
        return provider if isinstance(provider, Provider) else self.providers.get(provider)

    async def refresh(self, provider: Provider | str, refresh_token: str) -> TokenGrant:
        provider = self.provider(provider)
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if provider.scopes:
            form["scope"] = provider.scope
        return await self._token_request(provider, form)

    async def exchange_code(
        self,
        provider: Provider | str,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> TokenGrant:
        provider = self.provider(provider)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return await self._token_request(provider, form)

    async def _token_request(self, provider: Provider, form: dict[str, str]) -> TokenGrant:
        # client_secret_post: every listed provider accepts credentials in the body.
        form["client_id"] = provider.client_id
        if provider.client_secret:
            form["client_secret"] = provider.client_secret
        started = time.time()
        try:
            async with self._client.stream("POST", provider.token_url, data=form) as response:
                raw = await self._read_bounded(response, provider.name)
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise OAuthUnavailable(f"OAuth {provider.name}: token endpoint timed out") from exc
        except httpx.TransportError as exc:
            failure = tls_cause(exc)
            if failure is not None:  # still transient: a proxy or MITM may go away
                host = httpx.URL(provider.token_url).host
                raise OAuthUnavailable(
                    f"OAuth {provider.name}: token endpoint TLS failed "
                    f"({describe_tls_failure(failure, host)})"
                ) from exc
            raise OAuthUnavailable(
                f"OAuth {provider.name}: token endpoint unreachable ({type(exc).__name__})"
            ) from exc
        body = _json_object(raw)
        log.info(
            "token endpoint answered",
            extra={"provider": provider.name, "status": status, "grant": form["grant_type"]},
        )
        if status != 200:
            raise classify_error(status, body, provider=provider.name)
        if body is None:
            raise OAuthRejected(f"OAuth {provider.name}: token response is not a JSON object")
        return parse_grant(body, now=started, provider=provider.name)

    async def _read_bounded(self, response: httpx.Response, provider: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response:
                message = f"OAuth {provider}: token response exceeds {self.max_response} bytes"
                if response.status_code >= 500:
                    raise OAuthUnavailable(message, delay=5.0)
                raise OAuthRejected(message)
            chunks.append(chunk)
        return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
