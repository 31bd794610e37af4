"""Read queries behind the API, always scoped by account id."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from mailish.store.connecting import Conn

ACCOUNT = """
SELECT email, status, sync_state, messages_synced, messages_total, folders_synced,
    folders_total, last_error
FROM accounts WHERE id = $1
"""
STATE = "SELECT modseq FROM accounts WHERE id = $1"
FOLDERS = """
SELECT id, name, path, parent_id, role, total, unread, flagged_reason AS sync_problem
FROM folders
WHERE account_id = $1 AND NOT deleting ORDER BY path
"""


async def account(conn: Conn, *, account_id: UUID) -> Any:
    return await conn.fetchrow(ACCOUNT, account_id)


async def state(conn: Conn, *, account_id: UUID) -> int:
    value = await conn.fetchval(STATE, account_id)
    return int(value or 0)


async def folders(conn: Conn, *, account_id: UUID) -> list[Any]:
    return list(await conn.fetch(FOLDERS, account_id))


DELIMITER = """
SELECT delimiter FROM folders WHERE account_id = $1 AND delimiter IS NOT NULL
ORDER BY (role = 'inbox') DESC NULLS LAST LIMIT 1
"""


async def delimiter(conn: Conn, *, account_id: UUID) -> str | None:
    value = await conn.fetchval(DELIMITER, account_id)
    return str(value) if value is not None else None


ROLE_FOLDER = """
SELECT raw_name FROM folders WHERE account_id = $1 AND role = $2 AND NOT deleting LIMIT 1
"""


async def role_folder(conn: Conn, *, account_id: UUID, role: str) -> str | None:
    """The wire name of the account's folder with ``role`` (sent, drafts, trash...)."""
    value = await conn.fetchval(ROLE_FOLDER, account_id, role)
    return str(value) if value is not None else None
