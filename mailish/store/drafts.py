"""Drafts composed in the app: the latest version of each, keyed by its Message-ID."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from mailish.store import blobs
from mailish.store.connecting import Conn

UPSERT = """
INSERT INTO drafts (account_id, id, raw_sha256, envelope_from, recipients)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account_id, id) DO UPDATE SET raw_sha256 = EXCLUDED.raw_sha256,
    envelope_from = EXCLUDED.envelope_from, recipients = EXCLUDED.recipients,
    version = drafts.version + 1, updated_at = now()
RETURNING version
"""
GET = """
SELECT d.id, d.envelope_from, d.recipients, d.version, d.raw_sha256, b.data
FROM drafts d JOIN message_blobs b ON b.account_id = d.account_id AND b.sha256 = d.raw_sha256
WHERE d.account_id = $1 AND d.id = $2
"""
DELETE = "DELETE FROM drafts WHERE account_id = $1 AND id = $2 RETURNING id"


@dataclass(frozen=True, slots=True)
class StoredDraft:
    id: str
    envelope_from: str
    recipients: tuple[str, ...]
    version: int
    sha256: bytes
    raw: bytes


async def save(
    conn: Conn,
    *,
    account_id: UUID,
    draft_id: str,
    raw: bytes,
    sha256: bytes,
    envelope_from: str,
    recipients: tuple[str, ...],
) -> int:
    await blobs.put(conn, account_id=account_id, data=raw, sha256=sha256)
    version = await conn.fetchval(
        UPSERT, account_id, draft_id, sha256, envelope_from, list(recipients)
    )
    return int(version)


async def get(conn: Conn, *, account_id: UUID, draft_id: str) -> StoredDraft | None:
    row = await conn.fetchrow(GET, account_id, draft_id)
    if row is None:
        return None
    return StoredDraft(
        row["id"], row["envelope_from"], tuple(row["recipients"]), row["version"],
        bytes(row["raw_sha256"]), bytes(row["data"]),
    )  # fmt: skip


async def delete(conn: Conn, *, account_id: UUID, draft_id: str) -> bool:
    return await conn.fetchval(DELETE, account_id, draft_id) is not None
