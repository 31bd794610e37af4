"""A push service stand-in for tests: a real uvicorn serving an ASGI app that records every POST.

``serve(app)`` runs any ASGI app (or a FastAPI app with its lifespan) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI


async def serve(app: Any) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    lifespan = "on" if isinstance(app, FastAPI) else "off"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan=lifespan))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Receiver:
    """A push service: records every POST; ``answers[path]`` scripts the statuses."""

    base: str = ""
    posts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hosts: set[str] = field(default_factory=set)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.posts.append((time.monotonic(), scope["path"], json.loads(body)))
        self.hosts.add(dict(scope["headers"])[b"host"].decode())
        self.arrived.set()
        script = self.answers.get(scope["path"], [])
        status = script.pop(0) if script else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def to(self, path: str) -> list[dict[str, Any]]:
        return [body for _, p, body in self.posts if p == path]

    def times(self, path: str) -> list[float]:
        return [at for at, p, _ in self.posts if p == path]

    async def wait_for(self, check: Callable[[], bool], limit: float) -> None:
        async with asyncio.timeout(limit):
            while not check():
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async for base in serve(receiver):
        receiver.base = base
        yield receiver
