"""Modifying routes: applied locally at once (optimistic), queued for the owning worker.

Each answers 202 ``{operation_id}``; ``GET /v1/operations/{id}`` reports how it ended. The
local change, its change-log row and the queued operation commit together, and the commit's
NOTIFY wakes the worker that owns the account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from mailish.api.auth import AccountIdDep
from mailish.api.messages import IdPath
from mailish.api.state import PoolDep
from mailish.observability import metrics
from mailish.store import local_changes, operations
from mailish.store.connecting import Conn, Pool

router = APIRouter(prefix="/v1", tags=["operations"])


class OperationAccepted(BaseModel):
    operation_id: int | None = Field(description="None when nothing had to change.")


class OperationOut(BaseModel):
    id: int
    kind: str
    status: Literal["pending", "running", "done", "failed"]
    error: str | None


# Ids are bigints: anything outside 1..2**63-1 names nothing and must not reach the database.
class MessagePatch(BaseModel):
    seen: bool | None = None
    flagged: bool | None = None
    folder_id: int | None = Field(default=None, ge=1, le=2**63 - 1)


class FolderCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    parent_id: int | None = Field(default=None, ge=1, le=2**63 - 1)


class FolderRename(BaseModel):
    name: str = Field(min_length=1, max_length=200)


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, detail={"error": "not_found", "detail": f"no such {what}"})


@asynccontextmanager
async def _change(pool: Pool, what: str) -> AsyncIterator[Conn]:
    """One transaction for the local change + change log + queued operation, with the
    store's refusals mapped to HTTP once."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
    except local_changes.NotFound:
        raise _not_found(what) from None
    except local_changes.Conflict as exc:
        raise HTTPException(409, detail={"error": "conflict", "detail": str(exc)}) from None
    except ValueError as exc:
        raise HTTPException(422, detail={"error": "invalid", "detail": str(exc)}) from None


def _accepted(op: int | None) -> OperationAccepted:
    if op is not None:
        metrics.user_operations.labels(status="pending").inc()
    return OperationAccepted(operation_id=op)


@router.patch(
    "/messages/{id}", status_code=status.HTTP_202_ACCEPTED, response_model=OperationAccepted
)
async def patch_message(
    id: IdPath, body: MessagePatch, account_id: AccountIdDep, pool: PoolDep
) -> OperationAccepted:
    last: int | None = None
    async with _change(pool, "message") as conn:
        if body.seen is not None or body.flagged is not None:
            last = await local_changes.set_flags(
                conn, account_id=account_id, message_id=id, seen=body.seen, flagged=body.flagged
            )
        if body.folder_id is not None:
            moved = await local_changes.move(
                conn, account_id=account_id, message_id=id, to_folder_id=body.folder_id
            )
            last = moved if moved is not None else last
        if last is None:
            await local_changes.message(conn, account_id=account_id, message_id=id)
    return _accepted(last)


@router.delete(
    "/messages/{id}", status_code=status.HTTP_202_ACCEPTED, response_model=OperationAccepted
)
async def delete_message(id: IdPath, account_id: AccountIdDep, pool: PoolDep) -> OperationAccepted:
    async with _change(pool, "message") as conn:
        op = await local_changes.delete(conn, account_id=account_id, message_id=id)
    return _accepted(op)


@router.post("/folders", status_code=status.HTTP_202_ACCEPTED)
async def create_folder(
    body: FolderCreate, account_id: AccountIdDep, pool: PoolDep
) -> dict[str, int]:
    async with _change(pool, "folder") as conn:
        delimiter = await conn.fetchval(
            "SELECT delimiter FROM folders WHERE account_id = $1 AND delimiter IS NOT NULL LIMIT 1",
            account_id,
        )
        folder_id, op = await local_changes.create_folder(
            conn, account_id=account_id, name=body.name, parent_id=body.parent_id,
            default_delimiter=delimiter or "/",
        )  # fmt: skip
    _accepted(op)
    return {"operation_id": op, "folder_id": folder_id}


@router.patch(
    "/folders/{id}", status_code=status.HTTP_202_ACCEPTED, response_model=OperationAccepted
)
async def rename_folder(
    id: IdPath, body: FolderRename, account_id: AccountIdDep, pool: PoolDep
) -> OperationAccepted:
    async with _change(pool, "folder") as conn:
        op = await local_changes.rename_folder(
            conn, account_id=account_id, folder_id=id, name=body.name
        )
    return _accepted(op)


@router.delete(
    "/folders/{id}", status_code=status.HTTP_202_ACCEPTED, response_model=OperationAccepted
)
async def delete_folder(id: IdPath, account_id: AccountIdDep, pool: PoolDep) -> OperationAccepted:
    async with _change(pool, "folder") as conn:
        op = await local_changes.delete_folder(conn, account_id=account_id, folder_id=id)
    return _accepted(op)


@router.get("/operations/{operation_id}", response_model=OperationOut)
async def get_operation(
    operation_id: IdPath, account_id: AccountIdDep, pool: PoolDep
) -> OperationOut:
    async with pool.acquire() as conn:
        row = await operations.get(conn, account_id=account_id, operation_id=operation_id)
    if row is None:
        raise _not_found("operation")
    return OperationOut(id=row["id"], kind=row["kind"], status=row["status"], error=row["error"])
