"""API tokens: random bearer secrets shown once, stored only as SHA-256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID

from mailish.store.connecting import Conn

PREFIX = "mlsh_"
INSERT = "INSERT INTO api_tokens (account_id, token_hash, label) VALUES ($1, $2, $3)"
LOOKUP = """
UPDATE api_tokens SET last_used_at = now()
WHERE token_hash = $1 AND revoked_at IS NULL
RETURNING account_id
"""
REVOKE_ALL = "UPDATE api_tokens SET revoked_at = now() WHERE account_id = $1 AND revoked_at IS NULL"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def issue(conn: Conn, *, account_id: UUID, label: str | None = None) -> str:
    token = PREFIX + secrets.token_urlsafe(32)
    await conn.execute(INSERT, account_id, digest(token), label)
    return token


async def account_for(conn: Conn, *, token: str) -> UUID | None:
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    value = await conn.fetchval(LOOKUP, digest(token))
    return value if isinstance(value, UUID) else None


async def revoke_all(conn: Conn, *, account_id: UUID) -> None:
    await conn.execute(REVOKE_ALL, account_id)
