"""Request and response bodies of linking and re-authorising, and how each login is obtained.

A login is a ``password`` or an ``oauth`` grant — exactly one. An OAuth grant is either a
refresh token the app already holds or an authorization code (with its ``redirect_uri`` and
PKCE ``code_verifier``) that mailish exchanges itself. Secrets are never echoed: they are
``repr=False`` and the 422 handler names fields, never values.
"""

from __future__ import annotations

from typing import Literal, Self

from fastapi import HTTPException
from pydantic import BaseModel, Field, field_validator, model_validator

from mailish.domain.addresses import normalise_address
from mailish.domain.endpoints import Endpoint, Security, normalise_host
from mailish.domain.errors import ConfigError
from mailish.mail.credentials import CredentialError
from mailish.mail.oauth.broker import (
    OAuthRejected,
    OAuthRevoked,
    OAuthUnavailable,
    TokenBroker,
    TokenGrant,
)
from mailish.services.oauth_login import grant_for

SECRET_MAX = 4096


class ServerSettings(BaseModel):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    security: Literal["tls", "starttls", "plain"] = "tls"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalise_host(value)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, Security(self.security))

    @classmethod
    def of(cls, endpoint: Endpoint) -> ServerSettings:
        return cls(host=endpoint.host, port=endpoint.port, security=endpoint.security.value)


class OAuthGrantIn(BaseModel):
    """``{provider, refresh_token}`` or ``{provider, code, redirect_uri, code_verifier}``."""

    provider: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    refresh_token: str | None = Field(default=None, min_length=1, max_length=SECRET_MAX, repr=False)
    code: str | None = Field(default=None, min_length=1, max_length=SECRET_MAX, repr=False)
    redirect_uri: str | None = Field(default=None, min_length=1, max_length=2048)
    # RFC 7636: 43-128 characters from the unreserved set.
    code_verifier: str | None = Field(
        default=None, min_length=43, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$", repr=False
    )

    @model_validator(mode="after")
    def _one_grant(self) -> Self:
        if (self.refresh_token is None) == (self.code is None):
            raise ValueError("give either refresh_token or code")
        if self.code is not None and self.redirect_uri is None:
            raise ValueError("an authorization code needs its redirect_uri")
        return self


class LoginIn(BaseModel):
    """Exactly one of ``password`` and ``oauth``."""

    password: str | None = Field(default=None, min_length=1, max_length=SECRET_MAX, repr=False)
    oauth: OAuthGrantIn | None = None
    username: str | None = Field(default=None, max_length=320)

    @model_validator(mode="after")
    def _one_login(self) -> Self:
        if (self.password is None) == (self.oauth is None):
            raise ValueError("give either password or oauth")
        return self


class LinkBody(LoginIn):
    email: str = Field(min_length=3, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    imap: ServerSettings | None = None
    smtp: ServerSettings | None = None

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        return normalise_address(value)


class LinkedOut(BaseModel):
    account_id: str
    token: str
    imap: ServerSettings
    smtp: ServerSettings
    source: str = Field(
        description="Where the settings came from: request, oauth_provider, provider, ispdb, "
        "autoconfig, well-known, srv, mx or guess."
    )
    auth: Literal["password", "oauth2"]


class CredentialsOut(BaseModel):
    status: str


def failure(status: int, code: str, detail: str) -> HTTPException:
    return HTTPException(status, detail={"error": code, "detail": detail})


def known_provider(broker: TokenBroker | None, oauth: OAuthGrantIn) -> TokenBroker:
    if broker is None or oauth.provider not in broker.providers:
        raise failure(
            422, "unknown_provider", f"OAuth provider {oauth.provider!r} is not configured"
        )
    return broker


async def obtain_grant(broker: TokenBroker | None, oauth: OAuthGrantIn) -> TokenGrant:
    """Exchange the code or prove the refresh token, with each failure as a clear answer:
    the user's grant is bad (401), the provider is unknown (422) or failing (503, 502)."""
    broker = known_provider(broker, oauth)
    try:
        return await grant_for(
            broker, oauth.provider, refresh_token=oauth.refresh_token, code=oauth.code,
            redirect_uri=oauth.redirect_uri, code_verifier=oauth.code_verifier,
        )  # fmt: skip
    except OAuthRevoked:
        raise failure(
            401, "auth_failed", "the provider refused the grant (revoked, expired or used)"
        ) from None
    except OAuthUnavailable as exc:
        raise HTTPException(
            503, detail={"error": "provider_unavailable", "detail": str(exc)},
            headers={"Retry-After": str(max(1, int(exc.delay)))},
        ) from None  # fmt: skip
    except (OAuthRejected, ConfigError) as exc:
        raise failure(502, "provider_rejected", str(exc)) from None
    except CredentialError as exc:
        raise failure(422, "no_refresh_token", str(exc)) from None
