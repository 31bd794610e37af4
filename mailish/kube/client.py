"""A small async Kubernetes API client: the few verbs mailish needs, over httpx.

Why not the official client: it is synchronous, and its watch cannot be cancelled from asyncio
without leaking a thread blocked in a socket read. httpx is already a dependency, takes its
transport in the constructor (tests point it at the in-process emulator) and cancels cleanly.

Errors are translated here, once: 404 ``NotFound``, 409 ``Conflict`` (a stale resourceVersion
or an existing name), 410 ``Gone`` (a watch resumed too late), 422 ``Invalid``; 429, 5xx and
network failures are ``TransientError`` subclasses, so callers retry by class alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

import httpx

from mailish.domain.errors import MailishError, TransientError, Unreachable
from mailish.kube.connecting import KubeConnection

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
Json = dict[str, Any]


class ApiError(MailishError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    pass


class Invalid(ApiError):
    pass


class ServerBusy(TransientError):
    """429 or 5xx: the API server is overloaded or failing; try again later."""


_BY_STATUS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}


class _FreshAuthorization(httpx.Auth):
    """Asks the connection for the header on every request, so rotated tokens are used."""

    def __init__(self, connection: KubeConnection) -> None:
        self._connection = connection

    def auth_flow(self, request: httpx.Request) -> Any:
        header = self._connection.authorization()
        if header:
            request.headers["Authorization"] = header
        yield request


class KubeClient:
    def __init__(
        self,
        connection: KubeConnection,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=connection.server,
            auth=_FreshAuthorization(connection),
            verify=connection.ssl_context(),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "mailish"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> Json:
        return await self._call("GET", path, params=params)

    async def create(self, path: str, body: Json) -> Json:
        return await self._call("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Json) -> Json:
        """RFC 7386 merge patch; a ``metadata.resourceVersion`` in it is a precondition (409)."""
        return await self._call("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def watch(
        self, path: str, *, resource_version: str, params: Mapping[str, str], server_timeout: float
    ) -> AsyncGenerator[Json, None]:
        """Events after ``resource_version`` until the server ends the stream.

        The server ends it after ``server_timeout`` seconds (``timeoutSeconds``); if it goes silent
        instead (a dead connection), the read times out a little later and ``Unreachable`` is
        raised, so a half-open connection cannot hide changes forever.
        """
        query = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, round(server_timeout))),
        }
        limits = httpx.Timeout(10.0, read=server_timeout + 15.0)
        try:
            async with self._http.stream("GET", path, params=query, timeout=limits) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield cast(Json, json.loads(line))
        except httpx.TransportError as exc:
            raise Unreachable(f"watch {path}: {exc!r}", delay=1.0) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Json | None = None,
        content_type: str = "application/json",
    ) -> Json:
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if body is not None else None
        try:
            response = await self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"{method} {path}: {exc!r}", delay=1.0) from exc
        if response.status_code >= 400:
            raise _error(response)
        return cast(Json, response.json())


def _error(response: httpx.Response) -> Exception:
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    reason = str(payload.get("reason") or response.reason_phrase)
    message = str(payload.get("message") or response.text[:200])
    if status == 429 or status >= 500:
        retry_after = response.headers.get("Retry-After", "")
        delay = float(retry_after) if retry_after.isdigit() else 1.0
        return ServerBusy(f"{status} {reason}: {message}", delay=delay)
    return _BY_STATUS.get(status, ApiError)(status, reason, message)
