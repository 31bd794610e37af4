"""Sending: uploads, ``POST /v1/send`` (idempotent, durable), the outbox and undo.

The API composes the message (pure domain code), runs the pre-send check, and commits the
outbox row with the composed bytes before answering 202, so an accepted send survives any
crash. The worker that owns the account does the SMTP conversation (``worker/sending.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Response, UploadFile, status
from pydantic import BaseModel, Field

from mailish.api.auth import AccountIdDep
from mailish.api.state import ApiState, StateDep
from mailish.domain import composing
from mailish.domain.errors import TransientError
from mailish.domain.ids import AccountId
from mailish.domain.parsing import extract_part
from mailish.services import presend
from mailish.store import accounts, operations, outbox, uploads
from mailish.store.connecting import Conn

router = APIRouter(prefix="/v1", tags=["sending"])
IDEMPOTENCY_HEADER = "Idempotency-Key"


class AttachmentOut(BaseModel):
    attachment_id: str


class SendBody(BaseModel):
    to: list[str] = Field(default_factory=list, max_length=1000)
    cc: list[str] = Field(default_factory=list, max_length=1000)
    bcc: list[str] = Field(default_factory=list, max_length=1000)
    subject: str = Field(default="", max_length=998)
    text: str | None = None
    html: str | None = None
    attachment_ids: list[str] = Field(default_factory=list, max_length=100)
    in_reply_to: int | None = Field(default=None, ge=1, le=2**63 - 1)
    send_at: dt.datetime | None = None


class SendAccepted(BaseModel):
    operation_id: UUID
    message_id: str


SendStatus = Literal["queued", "sending", "sent", "partially_sent", "failed", "cancelled"]
SEND_STATUSES: frozenset[str] = frozenset(get_args(SendStatus))


class OutboxOut(BaseModel):
    operation_id: UUID
    #: ``sending`` until the outcome is known: the store's ``unknown`` (the message may have
    #: reached the server and is being checked against Sent) ends ``sent`` or ``failed``.
    status: SendStatus
    message_id: str
    refused: dict[str, Any]
    error: str | None
    send_at: dt.datetime
    sent_at: dt.datetime | None


def unprocessable(field: str, detail: str, code: str = "invalid_request") -> HTTPException:
    return HTTPException(
        422, detail={"error": code, "detail": f"{field}: {detail}", "fields": [field]}
    )


@router.post("/attachments", status_code=status.HTTP_201_CREATED, response_model=AttachmentOut)
async def upload_attachment(
    file: UploadFile, account_id: AccountIdDep, state: StateDep
) -> AttachmentOut:
    limit = state.settings.max_message_size
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail={"error": "too_large", "detail": f"over {limit} bytes"})
    filename = (file.filename or "attachment").replace("\\", "/").rsplit("/", 1)[-1][:255]
    async with state.pool.acquire() as conn:
        upload_id = await uploads.create(
            conn, account_id=account_id, filename=filename or "attachment",
            content_type=file.content_type or "application/octet-stream", data=data,
        )  # fmt: skip
    return AttachmentOut(attachment_id=f"u{upload_id}")


def _bigint(text: str) -> int | None:
    """``text`` as a database id, or None. ASCII digits only: ``str.isdigit`` also accepts
    "³" and other digits ``int`` will not read."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value < 2**63 else None


async def _attachments(
    conn: Conn, account_id: UUID, ids: list[str]
) -> list[composing.AttachmentIn]:
    """``u<n>`` is an upload; a plain number is an attachment of a synced message."""
    out: list[composing.AttachmentIn] = []
    for i, ref in enumerate(ids):
        field = f"attachment_ids[{i}]"
        upload_id = _bigint(ref[1:]) if ref.startswith("u") else None
        attachment_id = _bigint(ref)
        if upload_id is not None:
            found = await uploads.upload(conn, account_id=account_id, upload_id=upload_id)
            if found is None:
                raise unprocessable(field, "no such upload", "unknown_attachment")
            out.append(composing.AttachmentIn(found.filename, found.content_type, found.data))
        elif attachment_id is not None:
            part = await uploads.message_attachment(
                conn, account_id=account_id, attachment_id=attachment_id
            )
            extracted = extract_part(part[3], part[0]) if part else None
            if part is None or extracted is None:
                raise unprocessable(field, "no such attachment", "unknown_attachment")
            out.append(composing.AttachmentIn(part[1] or "attachment", extracted[1], extracted[0]))
        else:
            raise unprocessable(field, "not an attachment id", "unknown_attachment")
    return out


def request_hash(body: SendBody) -> bytes:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


async def compose_body(
    conn: Conn,
    state: ApiState,
    account_id: UUID,
    body: SendBody,
    *,
    draft_mode: bool = False,
    message_id: str | None = None,
) -> composing.Composed:
    record = await accounts.get(conn, account_id=AccountId(account_id))
    if record is None:
        raise HTTPException(404, detail={"error": "not_found", "detail": "no such account"})
    reply = None
    if body.in_reply_to is not None:
        replied = await uploads.replied(conn, account_id=account_id, message_id=body.in_reply_to)
        if replied is None:
            raise unprocessable("in_reply_to", "no such message", "unknown_message")
        if replied[0]:
            reply = composing.ReplyTo(replied[0], tuple(replied[1]))
    draft = composing.Draft(
        to=body.to, cc=body.cc, bcc=body.bcc, subject=body.subject, text=body.text,
        html=body.html, attachments=await _attachments(conn, account_id, body.attachment_ids),
        in_reply_to=reply,
    )  # fmt: skip
    sender = composing.Sender(record.email, await accounts.display_name(conn, account_id=record.id))
    try:
        return composing.compose(
            sender, draft, now=dt.datetime.now(dt.UTC), message_id=message_id,
            max_size=state.settings.max_message_size, draft_mode=draft_mode,
        )  # fmt: skip
    except composing.ComposeError as exc:
        status_code = 413 if exc.field == "size" else 422
        raise HTTPException(
            status_code,
            detail={
                "error": "invalid_message",
                "detail": f"{exc.field}: {exc}",
                "fields": [exc.field],
            },
        ) from None


@router.post("/send", status_code=status.HTTP_202_ACCEPTED, response_model=SendAccepted)
async def send(
    body: SendBody,
    account_id: AccountIdDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)] = None,
) -> SendAccepted:
    if not idempotency_key:
        raise unprocessable(IDEMPOTENCY_HEADER, "header required (any unique string per send)")
    digest = request_hash(body)
    async with state.pool.acquire() as conn:
        composed = await compose_body(conn, state, account_id, body)
    await passes_presend(state, account_id, composed)
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            queued = await outbox.enqueue(
                conn, account_id=account_id, key=idempotency_key, request_hash=digest,
                message_id=composed.message_id, raw=composed.raw,
                sha256=hashlib.sha256(composed.raw).digest(), envelope_from=composed.envelope_from,
                recipients=composed.recipients, send_at=body.send_at,
            )  # fmt: skip
        except outbox.IdempotencyConflict as exc:
            raise HTTPException(
                409, detail={"error": "idempotency_conflict", "detail": str(exc)}
            ) from None
        if queued.created:
            await operations.wake(conn, account_id=account_id)
    return SendAccepted(operation_id=queued.id, message_id=queued.message_id)


async def passes_presend(state: ApiState, account_id: UUID, composed: composing.Composed) -> None:
    """The pre-send check (limits, then the operator's service) for every way mail leaves:
    422 ``rejected`` with the reasons, 503 ``check_unavailable`` when the service cannot
    say. Called outside any transaction: the service may take up to 5 s to answer."""
    try:
        reasons = await presend.check(
            composed, account_id=account_id, max_size=state.settings.max_message_size,
            max_recipients=state.settings.max_recipients,
            service_url=state.settings.presend_check_url, ca_files=state.settings.tls_ca_file,
        )  # fmt: skip
    except TransientError as exc:
        raise HTTPException(
            503, detail={"error": "check_unavailable", "detail": str(exc)},
            headers={"Retry-After": "30"},
        ) from None  # fmt: skip
    if reasons:
        raise HTTPException(422, detail={"error": "rejected", "detail": "; ".join(reasons)})


@router.get("/outbox/{operation_id}", response_model=OutboxOut)
async def get_outbox(operation_id: UUID, account_id: AccountIdDep, state: StateDep) -> OutboxOut:
    async with state.pool.acquire() as conn:
        row = await outbox.get(conn, account_id=account_id, outbox_id=operation_id)
    if row is None:
        raise HTTPException(404, detail={"error": "not_found", "detail": "no such send"})
    return OutboxOut(
        operation_id=row["id"], status=_shown(row["status"]), message_id=row["header_message_id"],
        refused=row["refused"], error=row["error"], send_at=row["send_at"],
        sent_at=row["sent_at"],
    )  # fmt: skip


@router.delete("/outbox/{operation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def cancel_send(operation_id: UUID, account_id: AccountIdDep, state: StateDep) -> Response:
    """Undo send: possible while the send is queued and its ``send_at`` is still ahead."""
    async with state.pool.acquire() as conn:
        if await outbox.cancel(conn, account_id=account_id, outbox_id=operation_id):
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        row = await outbox.get(conn, account_id=account_id, outbox_id=operation_id)
    if row is None:
        raise HTTPException(404, detail={"error": "not_found", "detail": "no such send"})
    raise HTTPException(
        409, detail={"error": "too_late", "detail": f"the send is already {_shown(row['status'])}"}
    )


def _shown(status: str) -> SendStatus:
    """The outbox status as the app sees it: ``unknown`` is still ``sending``."""
    shown = "sending" if status == "unknown" else status
    assert shown in SEND_STATUSES, shown
    return shown  # type: ignore[return-value]
