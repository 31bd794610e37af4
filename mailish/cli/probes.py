"""A tiny HTTP server for processes that are not the api: /healthz, /readyz and /metrics.

Workers and the operator have no other HTTP surface; Kubernetes probes and Prometheus need
one. Liveness only says the event loop answers; readiness asks the process.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import Receive, Scope, Send

from mailish.domain.errors import ConfigError
from mailish.observability import metrics


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ProbeServer:
    def __init__(self, *, host: str, port: int, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._server = _Quiet(
            uvicorn.Config(  # a bound method: uvicorn cannot auto-detect ASGI 3
                self._app,
                host=host,
                port=port,
                log_config=None,
                lifespan="off",
                access_log=False,
                interface="asgi3",
            )
        )
        try:
            self._socket = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(
                f"invalid setting MAILISH_METRICS_PORT: cannot listen on {host}:{port} ({exc})"
            ) from None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/metrics":
            body, content_type = metrics.render()
            status = 200
        elif path == "/healthz":
            body, content_type, status = b'{"status":"ok"}', "application/json", 200
        elif path == "/readyz":
            ok = self._ready()
            body = b'{"status":"ok"}' if ok else b'{"status":"starting"}'
            content_type, status = "application/json", 200 if ok else 503
        else:
            body, content_type, status = b"{}", "application/json", 404
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        self._server.should_exit = True
