"""Request limits across routes, beyond what ``test_api_accounts.py`` covers (the default body
limit on linking, declared and chunked, and a flood on one token): linking is limited per
peer whatever token it carries, buckets are per token, probes are never limited, and the
message-carrying routes get their own, larger body limit while every other route keeps the
small one, before authentication."""

from __future__ import annotations

import asyncio

import httpx

from mailish.mail.credentials import KeyRing
from tests.harness.ca import LocalCA
from tests.integration.conftest import serve

LOOPBACK = {"host": "127.0.0.1", "port": 1}
LINK = {"email": "flood@example.com", "password": "pw", "imap": LOOPBACK, "smtp": LOOPBACK}


async def test_linking_is_limited_per_peer_whatever_token_it_carries(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA
) -> None:
    """Otherwise a new made-up token per request would make password spraying through
    POST /v1/accounts unlimited."""
    async with (
        serve(
            db_dsn, keyring, test_ca, api_rate=1.0, api_burst=5, allow_private_hosts=False
        ) as small,
        httpx.AsyncClient(base_url=small.base, timeout=30) as client,
    ):
        answers = await asyncio.gather(*(
            client.post("/v1/accounts", json=LINK, headers={"Authorization": f"Bearer mlsh_{n}"})
            for n in range(15)
        ))  # fmt: skip
        probes = [await client.get(path) for path in ("/healthz", "/metrics") for _ in range(10)]
    statuses = [a.status_code for a in answers]
    assert statuses.count(429) >= 15 - 5 - 2, statuses  # the burst, and a little refill
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert set(statuses) <= {422, 429}, statuses  # the rest: loopback refused
    assert {p.status_code for p in probes} == {200}


async def test_buckets_are_per_token(db_dsn: str, keyring: KeyRing, test_ca: LocalCA) -> None:
    async with (
        serve(db_dsn, keyring, test_ca, api_rate=1.0, api_burst=3) as small,
        httpx.AsyncClient(base_url=small.base) as client,
    ):
        flood = {"Authorization": "Bearer mlsh_flooding"}
        first = [(await client.get("/v1/account", headers=flood)).status_code for _ in range(6)]
        other = await client.get("/v1/account", headers={"Authorization": "Bearer mlsh_quiet"})
        anonymous = await client.get("/v1/account")
    assert first[:3] == [401, 401, 401] and 429 in first[3:]
    assert other.status_code == 401  # its own bucket is full
    assert anonymous.status_code == 401  # the peer's bucket is separate from the tokens'


async def test_body_limits_per_route_apply_before_authentication(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA
) -> None:
    big = b"x" * (64 * 1024)  # over api_max_body, far under the message routes' limit
    async with (
        serve(db_dsn, keyring, test_ca, api_max_body=4096, max_message_size=4096) as small,
        httpx.AsyncClient(base_url=small.base) as client,
    ):
        headers = {"Content-Type": "application/json", "Authorization": "Bearer mlsh_nobody"}
        small_routes = {
            ("POST", "/v1/push/subscriptions"), ("PUT", "/v1/account/credentials"),
            ("POST", "/v1/drafts"), ("PATCH", "/v1/messages/1"), ("POST", "/v1/folders"),
        }  # fmt: skip
        for method, path in sorted(small_routes):
            answer = await client.request(method, path, content=big, headers=headers)
            assert answer.status_code == 413, (path, answer.status_code)
            assert answer.json()["error"] == "too_large"
        for path in ("/v1/send", "/v1/attachments"):
            fits = await client.post(path, content=big, headers=headers)
            # let through: refused by the route (not JSON, no token), not by the size limit
            assert fits.status_code in (401, 422), (path, fits.status_code)
            huge = await client.post(path, content=b"x" * (2 << 20), headers=headers)
            assert huge.status_code == 413, (path, huge.status_code)
