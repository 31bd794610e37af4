"""Drafts: composed here, kept as the latest version, filed in the Drafts folder by the worker.

``draft_id`` is the draft's Message-ID, stable across versions. A save queues a
``save_draft`` operation (APPEND the new version, then remove older ones); sending a draft
passes the pre-send check like any send, then queues it in the outbox and removes the draft
in one transaction.
"""

from __future__ import annotations

import hashlib
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Path, status
from pydantic import BaseModel

from mailish.api.auth import AccountIdDep
from mailish.api.sending import (
    IDEMPOTENCY_HEADER,
    SendAccepted,
    SendBody,
    compose_body,
    passes_presend,
    unprocessable,
)
from mailish.api.state import ApiState, StateDep
from mailish.domain.composing import Composed
from mailish.store import drafts, operations, outbox

router = APIRouter(prefix="/v1", tags=["drafts"])
DraftId = Annotated[str, Path(min_length=3, max_length=250, pattern=r"^[^\s<>]+$")]


class DraftSaved(BaseModel):
    draft_id: str
    operation_id: int


def _missing() -> HTTPException:
    return HTTPException(404, detail={"error": "not_found", "detail": "no such draft"})


async def _save(
    body: SendBody, account_id: UUID, state: ApiState, draft_id: str | None
) -> DraftSaved:
    async with state.pool.acquire() as conn, conn.transaction():
        known = draft_id is None or await drafts.get(conn, account_id=account_id, draft_id=draft_id)
        if not known:
            raise _missing()
        composed = await compose_body(
            conn, state, account_id, body, draft_mode=True, message_id=draft_id
        )
        await drafts.save(
            conn, account_id=account_id, draft_id=composed.message_id, raw=composed.raw,
            sha256=hashlib.sha256(composed.raw).digest(), envelope_from=composed.envelope_from,
            recipients=composed.recipients,
        )  # fmt: skip
        op = await operations.enqueue(
            conn, account_id=account_id, kind="save_draft",
            payload={"draft_id": composed.message_id}, revert={},
        )  # fmt: skip
    return DraftSaved(draft_id=composed.message_id, operation_id=op)


@router.post("/drafts", status_code=status.HTTP_201_CREATED, response_model=DraftSaved)
async def create_draft(body: SendBody, account_id: AccountIdDep, state: StateDep) -> DraftSaved:
    return await _save(body, account_id, state, None)


@router.put("/drafts/{draft_id}", status_code=status.HTTP_202_ACCEPTED, response_model=DraftSaved)
async def update_draft(
    draft_id: DraftId, body: SendBody, account_id: AccountIdDep, state: StateDep
) -> DraftSaved:
    return await _save(body, account_id, state, draft_id)


@router.delete("/drafts/{draft_id}", status_code=status.HTTP_202_ACCEPTED)
async def delete_draft(
    draft_id: DraftId, account_id: AccountIdDep, state: StateDep
) -> dict[str, int]:
    async with state.pool.acquire() as conn, conn.transaction():
        if not await drafts.delete(conn, account_id=account_id, draft_id=draft_id):
            raise _missing()
        op = await operations.enqueue(
            conn, account_id=account_id, kind="delete_draft", payload={"draft_id": draft_id},
            revert={},
        )  # fmt: skip
    return {"operation_id": op}


@router.post(
    "/drafts/{draft_id}/send", status_code=status.HTTP_202_ACCEPTED, response_model=SendAccepted
)
async def send_draft(
    draft_id: DraftId,
    account_id: AccountIdDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)] = None,
) -> SendAccepted:
    async with state.pool.acquire() as conn:
        checked = await drafts.get(conn, account_id=account_id, draft_id=draft_id)
    if checked is None:
        raise _missing()
    if not checked.recipients:
        raise unprocessable("to", "a draft needs at least one recipient to be sent")
    await passes_presend(state, account_id, Composed(
        checked.raw, checked.id, checked.envelope_from, checked.recipients,
    ))  # fmt: skip
    async with state.pool.acquire() as conn, conn.transaction():
        draft = await drafts.get(conn, account_id=account_id, draft_id=draft_id)
        if draft is None:
            raise _missing()
        if draft.version != checked.version:
            raise HTTPException(409, detail={
                "error": "draft_changed",
                "detail": "the draft was saved again while it was being sent; send it again",
            })  # fmt: skip
        key = idempotency_key or f"draft:{draft_id}:{draft.version}"
        queued = await outbox.enqueue(
            conn, account_id=account_id, key=key, request_hash=draft.sha256,
            message_id=draft.id, raw=draft.raw, sha256=draft.sha256,
            envelope_from=draft.envelope_from, recipients=draft.recipients, send_at=None,
        )  # fmt: skip
        await drafts.delete(conn, account_id=account_id, draft_id=draft_id)
        await operations.enqueue(
            conn, account_id=account_id, kind="delete_draft", payload={"draft_id": draft_id},
            revert={},
        )  # fmt: skip
    return SendAccepted(operation_id=queued.id, message_id=queued.message_id)
