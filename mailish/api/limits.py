"""Request limits: body size (413) and a rate limit (429 with Retry-After).

Both run as ASGI middleware before routing, so an oversized or flooding request costs no
database work. The rate limiter is a token bucket per bearer token (keyed by a hash, never
the token), held per api process: with N pods a client gets at most N times the rate, which
is the usual trade for not putting a shared counter on every request's path.

Requests without a token are limited per peer address instead, and so is linking
(``POST /v1/accounts``) whatever header it carries: it needs no token, and each call makes
outbound logins and discovery lookups, so a per-token key would let anyone who sends a new
made-up token each time use us, unthrottled, to try passwords against mail servers. Behind
a proxy the peer is the proxy (uvicorn trusts forwarded headers only from configured
addresses), so this bounds linking per api process and proxy. Probes and metrics are exempt.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailish.config import Settings

MAX_TRACKED = 100_000
#: Keyed by the peer whatever token they carry: routes that do not authenticate.
BY_PEER = frozenset({"/v1/accounts"})
UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def take(self, key: bytes, now: float | None = None) -> float:
        """0 when allowed, else seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        limiter: RateLimiter,
        large: dict[str, int] | None = None,
    ) -> None:
        self.app, self.default_max_body, self.limiter = app, max_body, limiter
        self.large = large or {}  # path → its own limit (uploads and sends carry messages)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        key = _rate_key(scope, headers.get(b"authorization", b""))
        if key is not None:
            wait = self.limiter.take(key)
            if wait:
                retry = str(max(1, math.ceil(wait))).encode()
                body = b'{"error":"rate_limited","detail":"too many requests"}'
                await _reply(send, 429, body, [(b"retry-after", retry)])
                return
        limit = self.large.get(scope.get("path", ""), self.default_max_body)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, _too_large(limit), [])
            return
        await self.app(scope, *self._bounded(receive, send, limit))

    def _bounded(self, receive: Receive, send: Send, limit: int) -> tuple[Receive, Send]:
        """Enforce the limit on bodies without (or lying about) Content-Length: once over it,
        answer 413 ourselves, tell the app the client went away, and drop what it sends."""
        seen = 0
        started = replied = False

        async def bounded_receive() -> Message:
            nonlocal seen, replied
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not started and not replied:
                        replied = True
                        await _reply(send, 413, _too_large(limit), [])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if replied:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        return bounded_receive, guarded_send


def _rate_key(scope: Scope, auth: bytes) -> bytes | None:
    """Whose bucket a request takes from: its token's, its peer's, or none (probes)."""
    path = scope.get("path", "")
    if path in UNLIMITED:
        return None
    if auth[:7].lower() == b"bearer " and path not in BY_PEER:
        return b"token:" + hashlib.sha256(auth[7:].strip()).digest()
    client = scope.get("client")
    return b"peer:" + str(client[0] if client else "").encode()


def _too_large(limit: int) -> bytes:
    return b'{"error":"too_large","detail":"request body over %d bytes"}' % limit


def install(app: FastAPI, settings: Settings) -> None:
    limiter = RateLimiter(settings.api_rate, settings.api_burst)
    # a message's worth plus encoding overhead (base64 in JSON, multipart framing)
    large = settings.max_message_size * 4 // 3 + (1 << 20)
    app.add_middleware(
        LimitsMiddleware,
        max_body=settings.api_max_body,
        limiter=limiter,
        large={"/v1/attachments": large, "/v1/send": large},
    )
