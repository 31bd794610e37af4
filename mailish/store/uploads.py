"""Files uploaded for composing, and attachments reused from synced messages (forwarding).

Bytes live in ``message_blobs`` (once per account per hash); ``uploads`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from mailish.store import blobs
from mailish.store.connecting import Conn

INSERT = """
INSERT INTO uploads (account_id, sha256, filename, content_type, size)
VALUES ($1, $2, $3, $4, $5) RETURNING id
"""
UPLOAD = """
SELECT u.filename, u.content_type, b.data FROM uploads u
JOIN message_blobs b ON b.account_id = u.account_id AND b.sha256 = u.sha256
WHERE u.account_id = $1 AND u.id = $2
"""
MESSAGE_ATTACHMENT = """
SELECT a.part_id, a.filename, a.content_type, b.data AS raw FROM attachments a
JOIN messages m ON m.id = a.message_id AND m.account_id = a.account_id
JOIN message_blobs b ON b.account_id = m.account_id AND b.sha256 = m.sha256
WHERE a.account_id = $1 AND a.id = $2 AND m.expunged_at IS NULL
"""
REPLIED = """
SELECT header_message_id, references_ids FROM messages
WHERE account_id = $1 AND id = $2 AND expunged_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def create(
    conn: Conn, *, account_id: UUID, filename: str, content_type: str, data: bytes
) -> int:
    digest = await blobs.put(conn, account_id=account_id, data=data)
    return int(await conn.fetchval(INSERT, account_id, digest, filename, content_type, len(data)))


async def upload(conn: Conn, *, account_id: UUID, upload_id: int) -> Upload | None:
    row = await conn.fetchrow(UPLOAD, account_id, upload_id)
    if row is None:
        return None
    return Upload(row["filename"], row["content_type"], bytes(row["data"]))


async def message_attachment(
    conn: Conn, *, account_id: UUID, attachment_id: int
) -> tuple[str, str | None, str, bytes] | None:
    """(part id, filename, content type, the message's raw bytes) for forwarding."""
    row = await conn.fetchrow(MESSAGE_ATTACHMENT, account_id, attachment_id)
    if row is None:
        return None
    return row["part_id"], row["filename"], row["content_type"], bytes(row["raw"])


async def replied(
    conn: Conn, *, account_id: UUID, message_id: int
) -> tuple[str | None, list[str]] | None:
    row = await conn.fetchrow(REPLIED, account_id, message_id)
    if row is None:
        return None
    return row["header_message_id"], list(row["references_ids"])
