"""Read queries behind the message API: listings, search, one message, its raw bytes and parts.

Every query takes the caller's account id and filters on it, so another account's ids match
nothing and look exactly like ids that never existed. Tombstones (``expunged_at``) are never
returned. Listings page by keyset on ``(sort_date DESC, id DESC)``, which the partial index
``messages_listing_idx`` serves in order, so page 100 costs what page 1 costs; the caller asks
for one row more than it shows to learn whether another page exists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from mailish.domain.ids import FolderId, MessageId
from mailish.domain.parsing import Address
from mailish.store.connecting import Conn

# A folder whose DELETE is queued is already gone for the client (as in views.FOLDERS).
FOLDER_EXISTS = """
SELECT EXISTS (SELECT 1 FROM folders WHERE account_id = $1 AND id = $2 AND NOT deleting)
"""


def _page(where: str, *, after: bool) -> str:
    """A listing page: newest first, ``$3`` rows; ``after`` continues below ``($4, $5)``."""
    keyset = "\n  AND (sort_date, id) < ($4, $5)" if after else ""
    return f"""
SELECT id, folder_id, subject, from_addrs, to_addrs, sort_date, seen, flagged, snippet,
    has_attachments, size
FROM messages
WHERE account_id = $1 AND expunged_at IS NULL AND {where}{keyset}
ORDER BY sort_date DESC, id DESC LIMIT $3
"""  # noqa: S608 - composed from the constants below, never from input


IN_FOLDER = "folder_id = $2"
MATCHING = "search @@ websearch_to_tsquery('simple', $2)"
FOLDER_PAGE = _page(IN_FOLDER, after=False)
FOLDER_PAGE_AFTER = _page(IN_FOLDER, after=True)
SEARCH_PAGE = _page(MATCHING, after=False)
SEARCH_PAGE_AFTER = _page(MATCHING, after=True)
# One round trip: the message, its bytes and its attachment list.
MESSAGE = """
SELECT m.id, m.folder_id, m.seen, m.flagged, m.sort_date, b.data,
    coalesce((SELECT json_agg(json_build_object('id', a.id, 'filename', a.filename,
                                                'content_type', a.content_type, 'size', a.size,
                                                'content_id', a.content_id, 'inline', a.inline)
                              ORDER BY a.id)
              FROM attachments a WHERE a.account_id = m.account_id AND a.message_id = m.id),
             '[]'::json) AS attachments
FROM messages m JOIN message_blobs b ON b.account_id = m.account_id AND b.sha256 = m.sha256
WHERE m.account_id = $1 AND m.id = $2 AND m.expunged_at IS NULL
"""
RAW = """
SELECT b.data
FROM messages m JOIN message_blobs b ON b.account_id = m.account_id AND b.sha256 = m.sha256
WHERE m.account_id = $1 AND m.id = $2 AND m.expunged_at IS NULL
"""
ATTACHMENT_PART = """
SELECT a.part_id, a.filename, a.content_type, b.data
FROM attachments a
JOIN messages m ON m.id = a.message_id AND m.account_id = a.account_id
JOIN message_blobs b ON b.account_id = m.account_id AND b.sha256 = m.sha256
WHERE a.account_id = $1 AND a.message_id = $2 AND a.id = $3 AND m.expunged_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ends: the keyset of its last message."""

    sort_date: dt.datetime
    id: MessageId


@dataclass(frozen=True, slots=True)
class Summary:
    id: MessageId
    folder_id: FolderId
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    date: dt.datetime
    seen: bool
    flagged: bool
    snippet: str
    has_attachments: bool
    size: int

    @property
    def position(self) -> Position:
        return Position(self.date, self.id)


@dataclass(frozen=True, slots=True)
class Attachment:
    id: int
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: MessageId
    folder_id: FolderId
    seen: bool
    flagged: bool
    date: dt.datetime
    raw: bytes
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True, slots=True)
class AttachmentPart:
    """An attachment's row and the raw message it has to be cut out of."""

    part_id: str
    filename: str | None
    content_type: str
    raw: bytes


def _addresses(value: list[dict[str, str]]) -> tuple[Address, ...]:
    return tuple(Address(name=a.get("name", ""), email=a.get("email", "")) for a in value)


def _summary(row: Any) -> Summary:
    return Summary(
        id=MessageId(row["id"]),
        folder_id=FolderId(row["folder_id"]),
        subject=row["subject"],
        from_=_addresses(row["from_addrs"]),
        to=_addresses(row["to_addrs"]),
        date=row["sort_date"],
        seen=row["seen"],
        flagged=row["flagged"],
        snippet=row["snippet"],
        has_attachments=row["has_attachments"],
        size=row["size"],
    )


async def folder_exists(conn: Conn, *, account_id: UUID, folder_id: FolderId) -> bool:
    return bool(await conn.fetchval(FOLDER_EXISTS, account_id, folder_id))


async def folder_page(
    conn: Conn, *, account_id: UUID, folder_id: FolderId, limit: int, after: Position | None
) -> list[Summary]:
    """Up to ``limit`` live messages of the folder, newest first, strictly after ``after``."""
    if after is None:
        rows = await conn.fetch(FOLDER_PAGE, account_id, folder_id, limit)
    else:
        rows = await conn.fetch(
            FOLDER_PAGE_AFTER, account_id, folder_id, limit, after.sort_date, after.id
        )
    return [_summary(r) for r in rows]


async def search_page(
    conn: Conn, *, account_id: UUID, query: str, limit: int, after: Position | None
) -> list[Summary]:
    """Messages whose indexed text matches ``query`` (web-search syntax), newest first.

    Only messages the background indexer has reached are found; that lag is bounded by the
    indexer's batch interval, not by this query.
    """
    if after is None:
        rows = await conn.fetch(SEARCH_PAGE, account_id, query, limit)
    else:
        rows = await conn.fetch(
            SEARCH_PAGE_AFTER, account_id, query, limit, after.sort_date, after.id
        )
    return [_summary(r) for r in rows]


async def message(conn: Conn, *, account_id: UUID, message_id: MessageId) -> StoredMessage | None:
    row = await conn.fetchrow(MESSAGE, account_id, message_id)
    if row is None:
        return None
    return StoredMessage(
        id=MessageId(row["id"]),
        folder_id=FolderId(row["folder_id"]),
        seen=row["seen"],
        flagged=row["flagged"],
        date=row["sort_date"],
        raw=row["data"],
        attachments=tuple(Attachment(**a) for a in row["attachments"]),
    )


async def raw(conn: Conn, *, account_id: UUID, message_id: MessageId) -> bytes | None:
    data: bytes | None = await conn.fetchval(RAW, account_id, message_id)
    return data


async def attachment_part(
    conn: Conn, *, account_id: UUID, message_id: MessageId, attachment_id: int
) -> AttachmentPart | None:
    row = await conn.fetchrow(ATTACHMENT_PART, account_id, message_id, attachment_id)
    if row is None:
        return None
    return AttachmentPart(
        part_id=row["part_id"], filename=row["filename"], content_type=row["content_type"],
        raw=row["data"],
    )  # fmt: skip
