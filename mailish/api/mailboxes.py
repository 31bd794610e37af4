"""Read routes over the synced store: the account and its folders."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from mailish.api.auth import AccountIdDep
from mailish.api.state import PoolDep
from mailish.store import views

router = APIRouter(prefix="/v1", tags=["mail"])


class SyncProgress(BaseModel):
    state: str
    messages_synced: int
    messages_total: int
    folders_synced: int
    folders_total: int
    last_error: str | None


class AccountOut(BaseModel):
    email: str
    status: str
    sync: SyncProgress


class FolderOut(BaseModel):
    id: int
    name: str
    path: str
    parent_id: int | None
    role: str | None
    total: int
    unread: int
    sync_problem: str | None = Field(
        default=None,
        description="Why mailish stopped syncing this folder (e.g. its UIDVALIDITY keeps "
        "changing); its stored mail stays readable. Null while it syncs.",
    )


class FoldersOut(BaseModel):
    state: str
    folders: list[FolderOut]


@router.get("/account", response_model=AccountOut)
async def get_account(account_id: AccountIdDep, pool: PoolDep) -> AccountOut:
    async with pool.acquire() as conn:
        row = await views.account(conn, account_id=account_id)
    if row is None:
        raise HTTPException(404, detail={"error": "not_found", "detail": "no such account"})
    return AccountOut(
        email=row["email"],
        status=row["status"],
        sync=SyncProgress(
            state=row["sync_state"],
            messages_synced=row["messages_synced"],
            messages_total=row["messages_total"],
            folders_synced=row["folders_synced"],
            folders_total=row["folders_total"],
            last_error=row["last_error"],
        ),
    )


@router.get("/folders", response_model=FoldersOut)
async def list_folders(account_id: AccountIdDep, pool: PoolDep) -> FoldersOut:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        state = await views.state(conn, account_id=account_id)
        rows = await views.folders(conn, account_id=account_id)
    return FoldersOut(state=str(state), folders=[FolderOut(**dict(r)) for r in rows])
