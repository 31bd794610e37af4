"""Application factory. The lifespan owns the asyncpg pool; routes get it through ``deps``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailish import __version__
from mailish.api import (
    changes,
    drafts,
    events,
    health,
    limits,
    linking,
    mailboxes,
    messages,
    operations,
    push,
    sending,
)
from mailish.api.state import ApiState
from mailish.config import Settings
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import TokenBroker
from mailish.observability import metrics
from mailish.services.brokers import broker_from, close_broker
from mailish.store import connecting

log = logging.getLogger(__name__)
_ERROR_CODES = {
    401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
    429: "rate_limited",
}  # fmt: skip


class ErrorOut(BaseModel):
    """Every error answer: a machine-readable code and a sentence for people."""

    error: str
    detail: str
    fields: list[str] | None = Field(
        default=None, description="422 only: the offending fields, dotted"
    )


_ERROR = {"model": ErrorOut}
#: What routes behind a token can answer besides their own codes (documented in OpenAPI).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "Missing, unknown or revoked token"},
    404: {**_ERROR, "description": "No such object in this account"},
    413: {**_ERROR, "description": "Request body too large"},
    422: {**_ERROR, "description": "Invalid request; `fields` names them"},
    429: {**_ERROR, "description": "Rate limited; see Retry-After"},
}
LINKING_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {**_ERROR, "description": "Already linked, or stored settings unusable"},
    502: {**_ERROR, "description": "The mail or OAuth server failed or refused TLS"},
    503: {**_ERROR, "description": "The OAuth provider is unavailable; see Retry-After"},
}


def create_app(
    settings: Settings,
    *,
    dsn: str,
    keyring: KeyRing | None = None,
    broker: TokenBroker | None = None,
) -> FastAPI:
    """``broker`` is shared when the caller runs a worker in the same process; otherwise the
    app builds (and closes) its own from the settings."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await connecting.connect_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            connect_timeout=settings.db_connect_timeout,
        )
        own_broker = broker is None
        tokens = broker if broker is not None else broker_from(settings, keyring)
        app.state.mailish = ApiState(settings=settings, pool=pool, keyring=keyring, broker=tokens)
        log.info("api ready on %s:%s", settings.api_host, settings.api_port)
        try:
            async with events.fan_out(app, pool=pool, dsn=dsn):  # one LISTEN per process
                yield
        finally:
            await pool.close()
            if own_broker:
                await close_broker(tokens)

    app = FastAPI(title="mailish", version=__version__, lifespan=lifespan)
    app.include_router(health.router)
    for router in (mailboxes.router, messages.router, changes.router, events.router,
                   push.router, operations.router, sending.router, drafts.router):  # fmt: skip
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(linking.router, responses=LINKING_RESPONSES)

    @app.exception_handler(StarletteHTTPException)
    async def flat_errors(request: Request, exc: StarletteHTTPException) -> Response:
        """Errors are ``{"error": code, "detail": text}`` at the top level, always."""
        if isinstance(exc.detail, dict):
            body = exc.detail
        else:
            body = {"error": _ERROR_CODES.get(exc.status_code, "error"), "detail": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 that names the offending field(s) in one readable line."""
        fields = [".".join(str(p) for p in e["loc"] if p != "body") for e in exc.errors()]
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        detail = f"{fields[0] or 'body'}: {first['msg']}" if fields else str(first["msg"])
        return JSONResponse(
            {"error": "invalid_request", "detail": detail, "fields": fields}, status_code=422
        )

    limits.install(app, settings)

    @app.middleware("http")
    async def observe_latency(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.api_request_seconds.labels(
            route=template, method=request.method, status=f"{response.status_code // 100}xx"
        ).observe(time.perf_counter() - started)
        return response

    return app
