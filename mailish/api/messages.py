"""Routes: filled in by the mobile API work (issue 4)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["mail"])
