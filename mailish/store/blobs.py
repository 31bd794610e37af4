"""Raw message bytes, content-addressed: stored once per account per SHA-256."""

from __future__ import annotations

import hashlib
from uuid import UUID

from mailish.store.connecting import Conn

PUT = """
INSERT INTO message_blobs (account_id, sha256, size, data) VALUES ($1, $2, $3, $4)
ON CONFLICT (account_id, sha256) DO NOTHING
"""


async def put(conn: Conn, *, account_id: UUID, data: bytes, sha256: bytes | None = None) -> bytes:
    """Store ``data`` if it is not there yet; returns its SHA-256."""
    digest = sha256 if sha256 is not None else hashlib.sha256(data).digest()
    await conn.execute(PUT, account_id, digest, len(data), data)
    return digest
