"""Liveness, readiness and metrics. Liveness never touches the database: a slow PostgreSQL must
not make Kubernetes restart healthy api pods; readiness does, so traffic drains instead."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from mailish.api.state import PoolDep
from mailish.observability import metrics

router = APIRouter(include_in_schema=False)
READY_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(pool: PoolDep) -> Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as exc:  # a probe: any failure at all means "not ready"
        return JSONResponse(
            {"status": "unavailable", "reason": type(exc).__name__}, status_code=503
        )
    metrics.db_pool_size.set(pool.get_size())
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
