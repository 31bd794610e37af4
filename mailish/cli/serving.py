"""Running uvicorn inside our own event loop and signal handling.

We bind the listening socket ourselves so that a port in use is a one-line ``ConfigError``
(uvicorn would log and ``sys.exit``), and we switch off uvicorn's signal capture so one
handler (ours) stops the api and the worker together.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from mailish.config import Settings
from mailish.domain.errors import ConfigError


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self._settings = settings
        self._app = app
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            lifespan="on",
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        self._server = _EmbeddedServer(config)
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None, "bind() first"
        return int(self._socket.getsockname()[1])

    def bind(self) -> None:
        host, port = self._settings.api_host, self._settings.api_port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, kind, _, _, address = infos[0]
            # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
            # says TCP; without it keep-alive requests stall ~40 ms on delayed ACKs.
            sock = socket.socket(family, kind, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"invalid setting MAILISH_API_HOST/MAILISH_API_PORT: cannot listen on "
                f"{host}:{port} ({exc.strerror or exc})"
            ) from None
        sock.set_inheritable(True)
        self._socket = sock

    async def serve(self) -> None:
        assert self._socket is not None, "bind() first"
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()
        if not self._server.started:
            raise ConfigError("the API failed to start (see the log above)")

    def stop(self) -> None:
        events = getattr(self._app.state, "mailish_events", None)
        if events is not None:
            events.close()  # end open SSE streams now, not at the graceful-shutdown timeout
        self._server.should_exit = True
