"""Read routes over synced messages: folder listings, search, one message, raw bytes, parts.

Every lookup is scoped to the token's account in ``store.message_views``; a foreign or unknown
id answers the same 404 body, so ids leak nothing. Listings page by an opaque keyset cursor, so
a page never repeats or skips a message that was already there when paging started. Parsing
and sanitizing are CPU work on bytes from the store; large messages do it off the event loop
so one 20 MB mail does not stall every other request of this process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from mailish.api import sanitizing
from mailish.api.auth import AccountIdDep
from mailish.api.state import PoolDep
from mailish.domain.ids import FolderId, MessageId
from mailish.domain.parsing import Address, ParsedMessage, extract_part, parse_message
from mailish.store import message_views, views

router = APIRouter(prefix="/v1", tags=["mail"])

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
MAX_QUERY_CHARS = 1000
_MAX_BIGINT = 2**63 - 1
# Above this, parsing plus sanitizing can hold the loop for milliseconds (nh3 alone takes about
# 15 ms per 250 KB of html); below it a thread hop would cost more than the work.
_OFF_LOOP_BYTES = 32 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_TEXT = re.compile(r"(-?[0-9]{1,19})\.([0-9]{1,19})")
_NOT_FOUND = "not_found"
_T = TypeVar("_T")

IdPath = Annotated[int, Path(ge=1, le=_MAX_BIGINT)]
LimitQuery = Annotated[int, Query(description=f"page size, clamped to 1..{MAX_LIMIT}")]
CursorQuery = Annotated[
    str | None, Query(description="next_cursor of the previous page; omit for the first")
]


class AddressOut(BaseModel):
    name: str
    email: str


class _HeadlineOut(BaseModel):
    """What a listed message and an opened one both say about it."""

    # "from" is a keyword; populate_by_name (not validate_by_name) works on our pydantic floor.
    model_config = ConfigDict(populate_by_name=True)

    id: int
    folder_id: int
    subject: str
    from_: list[AddressOut] = Field(alias="from")
    to: list[AddressOut]
    date: dt.datetime
    seen: bool
    flagged: bool


class SummaryOut(_HeadlineOut):
    snippet: str
    has_attachments: bool
    size: int


class PageOut(BaseModel):
    state: str
    messages: list[SummaryOut]
    next_cursor: str | None


class AttachmentOut(BaseModel):
    id: int
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool


class MessageOut(_HeadlineOut):
    cc: list[AddressOut]
    bcc: list[AddressOut]
    reply_to: list[AddressOut]
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    text: str | None
    html: str | None
    attachments: list[AttachmentOut]
    parse_defects: list[str] = Field(
        description="What the parser had to work around to show this message (e.g. "
        "'charset-unknown:x', 'multipart-missing-closing-boundary'); empty when it is clean. "
        "The raw bytes (/raw) are always the server's, whatever these say."
    )


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, detail={"error": _NOT_FOUND, "detail": f"no such {what}"})


def _encode_cursor(position: message_views.Position) -> str:
    micros = (position.sort_date - _EPOCH) // _MICROSECOND
    text = f"{micros}.{position.id}".encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def _decode_cursor(cursor: str | None) -> message_views.Position | None:
    """The position a cursor names; anything we did not issue is a 422 ``invalid_cursor``."""
    if not cursor:  # absent, or sent empty by a client that had none
        return None
    invalid = HTTPException(
        422, detail={"error": "invalid_cursor", "detail": "cursor is not one this API issued"}
    )
    if not _CURSOR.fullmatch(cursor):
        raise invalid
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = _CURSOR_TEXT.fullmatch(text.decode("ascii"))
        if match is None or not 1 <= int(match[2]) <= _MAX_BIGINT:
            raise invalid
        sort_date = _EPOCH + int(match[1]) * _MICROSECOND
    except (binascii.Error, UnicodeDecodeError, OverflowError) as exc:
        raise invalid from exc
    return message_views.Position(sort_date, MessageId(int(match[2])))


def _addresses(addresses: Sequence[Address]) -> list[AddressOut]:
    return [AddressOut(name=a.name, email=a.email) for a in addresses]


def _page(state: int, rows: list[message_views.Summary], limit: int) -> PageOut:
    """Rows were fetched with one extra to tell whether there is a next page."""
    shown = rows[:limit]
    more = len(rows) > limit
    return PageOut(
        state=str(state),
        messages=[
            SummaryOut(
                id=r.id, folder_id=r.folder_id, subject=r.subject, from_=_addresses(r.from_),
                to=_addresses(r.to), date=r.date, seen=r.seen, flagged=r.flagged,
                snippet=r.snippet, has_attachments=r.has_attachments, size=r.size,
            )
            for r in shown
        ],
        next_cursor=_encode_cursor(shown[-1].position) if more else None,
    )  # fmt: skip


async def _cpu(size: int, work: Callable[[], _T]) -> _T:
    """Run CPU-bound ``work`` on a thread when its input is large, inline otherwise."""
    return await asyncio.to_thread(work) if size > _OFF_LOOP_BYTES else work()


def _render(raw: bytes) -> tuple[ParsedMessage, str | None]:
    parsed = parse_message(raw)
    return parsed, None if parsed.html is None else sanitizing.clean_html(parsed.html)


@router.get("/folders/{id}/messages", response_model=PageOut)
async def list_messages(
    id: IdPath,
    account_id: AccountIdDep,
    pool: PoolDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> PageOut:
    """Newest first; ``state`` and the page come from one snapshot."""
    after = _decode_cursor(cursor)
    limit = max(1, min(limit, MAX_LIMIT))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        if not await message_views.folder_exists(
            conn, account_id=account_id, folder_id=FolderId(id)
        ):
            raise _not_found("folder")
        state = await views.state(conn, account_id=account_id)
        rows = await message_views.folder_page(
            conn, account_id=account_id, folder_id=FolderId(id), limit=limit + 1, after=after
        )
    return _page(state, rows, limit)


@router.get("/search", response_model=PageOut)
async def search(
    account_id: AccountIdDep,
    pool: PoolDep,
    q: Annotated[str, Query(description='web-search syntax: words, "phrases", -not, or')] = "",
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> PageOut:
    """Full-text search over subject, addresses, attachment names and body text."""
    if not q.strip() or len(q) > MAX_QUERY_CHARS:
        raise HTTPException(
            422,
            detail={"error": "invalid_query", "detail": f"q needs 1..{MAX_QUERY_CHARS} characters"},
        )
    after = _decode_cursor(cursor)
    limit = max(1, min(limit, MAX_LIMIT))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        state = await views.state(conn, account_id=account_id)
        rows = await message_views.search_page(
            conn, account_id=account_id, query=q, limit=limit + 1, after=after
        )
    return _page(state, rows, limit)


@router.get("/messages/{id}", response_model=MessageOut)
async def get_message(id: IdPath, account_id: AccountIdDep, pool: PoolDep) -> MessageOut:
    async with pool.acquire() as conn:
        stored = await message_views.message(conn, account_id=account_id, message_id=MessageId(id))
    if stored is None:
        raise _not_found("message")
    parsed, html = await _cpu(len(stored.raw), lambda: _render(stored.raw))
    return MessageOut(
        id=stored.id, folder_id=stored.folder_id, subject=parsed.subject,
        from_=_addresses(parsed.from_), to=_addresses(parsed.to), cc=_addresses(parsed.cc),
        bcc=_addresses(parsed.bcc), reply_to=_addresses(parsed.reply_to),
        date=parsed.date or stored.date, message_id=parsed.message_id,
        in_reply_to=list(parsed.in_reply_to), references=list(parsed.references),
        seen=stored.seen, flagged=stored.flagged, text=parsed.text, html=html,
        parse_defects=list(parsed.defects),
        attachments=[
            AttachmentOut(
                id=a.id, filename=a.filename, content_type=a.content_type, size=a.size,
                content_id=a.content_id, inline=a.inline,
            )
            for a in stored.attachments
        ],
    )  # fmt: skip


@router.get(
    "/messages/{id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}, "description": "the stored bytes"}},
)
async def get_raw(id: IdPath, account_id: AccountIdDep, pool: PoolDep) -> Response:
    """Byte for byte what the server sent when the message was synced."""
    async with pool.acquire() as conn:
        data = await message_views.raw(conn, account_id=account_id, message_id=MessageId(id))
    if data is None:
        raise _not_found("message")
    return Response(
        content=data, media_type="message/rfc822", headers={"X-Content-Type-Options": "nosniff"}
    )


@router.get(
    "/messages/{id}/attachments/{attachment_id}",
    response_class=Response,
    # Any type: the part's own (made safe by sanitizing.download_type), not only octet-stream.
    responses={
        200: {
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the decoded part, in its own content type",
        }
    },
)
async def get_attachment(
    id: IdPath, attachment_id: IdPath, account_id: AccountIdDep, pool: PoolDep
) -> Response:
    """The decoded part as a download that a browser will neither sniff nor render."""
    async with pool.acquire() as conn:
        part = await message_views.attachment_part(
            conn, account_id=account_id, message_id=MessageId(id), attachment_id=attachment_id
        )
    if part is None:
        raise _not_found("attachment")
    extracted = await _cpu(len(part.raw), lambda: extract_part(part.raw, part.part_id))
    if extracted is None:
        raise _not_found("attachment")
    data, _ = extracted
    # Content-Type goes in as a header: media_type would append "charset=utf-8" to text/*,
    # which is wrong for a part in another charset.
    return Response(
        content=data,
        headers={
            "Content-Type": sanitizing.download_type(part.content_type),
            "Content-Disposition": sanitizing.content_disposition(part.filename),
            "X-Content-Type-Options": "nosniff",
        },
    )
