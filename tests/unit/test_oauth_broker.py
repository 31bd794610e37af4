"""The token endpoint client against httpx MockTransport: request shape and error classes."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from mailish.domain.errors import AuthError, PermanentError, TransientError
from mailish.mail.oauth.broker import (
    OAuthRejected,
    OAuthRevoked,
    OAuthUnavailable,
    TokenBroker,
    classify_error,
    parse_grant,
)
from mailish.mail.oauth.providers import Provider, ProviderRegistry

CORP = Provider("corp", "https://sso.test/token", "cid", "csecret", ("mail", "offline"))


def broker(
    handler: Callable[[httpx.Request], httpx.Response], *, max_response: int = 65536
) -> TokenBroker:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TokenBroker(ProviderRegistry({"corp": CORP}), client=client, max_response=max_response)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_grant"}, OAuthRevoked),
        (401, {"error": "invalid_grant"}, OAuthRevoked),
        (400, {"error": "invalid_client"}, OAuthRejected),
        (401, None, OAuthRejected),
        (400, {"error": "temporarily_unavailable"}, OAuthUnavailable),
        (429, None, OAuthUnavailable),
        (500, None, OAuthUnavailable),
        (503, {"error": "invalid_grant"}, OAuthRevoked),
    ],
)
def test_classify(status: int, body: dict[str, str] | None, kind: type[Exception]) -> None:
    assert type(classify_error(status, body, provider="corp")) is kind


def test_error_classes_fit_the_hierarchy() -> None:
    assert issubclass(OAuthRevoked, AuthError)
    assert issubclass(OAuthUnavailable, TransientError)
    assert issubclass(OAuthRejected, PermanentError) and not issubclass(OAuthRejected, AuthError)


@pytest.mark.parametrize(
    "body",
    [{}, {"access_token": ""}, {"access_token": "a", "token_type": "mac"}],
)
def test_parse_grant_rejects(body: dict[str, str]) -> None:
    with pytest.raises(OAuthRejected):
        parse_grant(body, now=0, provider="corp")


def test_parse_grant_defaults() -> None:
    grant = parse_grant({"access_token": "tok-1", "expires_in": "x"}, now=10, provider="corp")
    assert grant.expires_at == 10 + 3600 and grant.refresh_token is None
    assert "tok-1" not in repr(grant)


async def test_refresh_posts_form_with_client_credentials() -> None:
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        seen.append(parse_qs(request.content.decode()))
        body = {"access_token": "at", "token_type": "Bearer", "expires_in": 60,
                "refresh_token": "rt2"}  # fmt: skip
        return httpx.Response(200, json=body)

    grant = await broker(handler).refresh("corp", "rt1")
    assert (grant.access_token, grant.refresh_token) == ("at", "rt2")
    assert seen == [{"grant_type": ["refresh_token"], "refresh_token": ["rt1"],
                     "scope": ["mail offline"], "client_id": ["cid"],
                     "client_secret": ["csecret"]}]  # fmt: skip


async def test_exchange_code_sends_pkce_verifier() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        assert form["grant_type"] == ["authorization_code"]
        assert form["code_verifier"] == ["v" * 43]
        assert form["redirect_uri"] == ["app://cb"]
        return httpx.Response(200, json={"access_token": "at", "refresh_token": "rt"})

    grant = await broker(handler).exchange_code(
        "corp", code="c", redirect_uri="app://cb", code_verifier="v" * 43
    )
    assert grant.refresh_token == "rt"


async def test_invalid_grant_is_an_auth_error() -> None:
    b = broker(lambda _r: httpx.Response(400, json={"error": "invalid_grant"}))
    with pytest.raises(AuthError):
        await b.refresh("corp", "rt")


async def test_network_failure_and_timeout_are_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler in (refuse, slow):
        with pytest.raises(OAuthUnavailable):
            await broker(handler).refresh("corp", "rt")


async def test_oversized_response_is_refused() -> None:
    big = json.dumps({"access_token": "a" * 5000}).encode()
    b = broker(lambda _r: httpx.Response(200, content=big), max_response=1024)
    with pytest.raises(OAuthRejected, match="exceeds"):
        await b.refresh("corp", "rt")
    b = broker(lambda _r: httpx.Response(502, content=big), max_response=1024)
    with pytest.raises(OAuthUnavailable):
        await b.refresh("corp", "rt")


async def test_non_json_success_is_rejected() -> None:
    with pytest.raises(OAuthRejected, match="not a JSON"):
        await broker(lambda _r: httpx.Response(200, text="<html>")).refresh("corp", "rt")
