"""The folders aggregate: the mirror of the server's mailbox list and each folder's sync state.

Every change to what the API shows (created, renamed, deleted, counts) is written with a
change-log row in the same fenced transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from asyncpg import Record

from mailish.domain.folders import FolderRole
from mailish.domain.syncing import FolderSyncState, Phase
from mailish.store import changes
from mailish.store.connecting import Conn


@dataclass(frozen=True, slots=True)
class StoredFolder:
    id: int
    path: str
    raw_name: str
    name: str
    delimiter: str | None
    parent_id: int | None
    role: FolderRole | None
    selectable: bool
    state: FolderSyncState
    server_exists: int
    pending_op: int | None = None
    deleting: bool = False


LIST = """
SELECT id, path, raw_name, name, delimiter, parent_id, role, selectable, uidvalidity, uidnext,
       highestmodseq, sync_phase, initial_low_uid, resets, flagged_reason, server_exists,
       pending_op, deleting
FROM folders WHERE account_id = $1 ORDER BY path
"""
INSERT = """
INSERT INTO folders (account_id, path, raw_name, name, delimiter, role, attributes, selectable)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (account_id, path) DO NOTHING
RETURNING id
"""
UPDATE_META = """
UPDATE folders SET role = $3, attributes = $4, selectable = $5, delimiter = $6, updated_at = now()
WHERE account_id = $1 AND id = $2
  AND (role IS DISTINCT FROM $3 OR attributes <> $4 OR selectable <> $5
       OR delimiter IS DISTINCT FROM $6)
"""
RENAME = """
UPDATE folders SET path = $3, raw_name = $4, name = $5, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
DELETE = "DELETE FROM folders WHERE account_id = $1 AND id = ANY($2::bigint[]) RETURNING id"
SET_PARENTS = """
UPDATE folders f SET parent_id = p.id
FROM folders p
WHERE f.account_id = $1 AND p.account_id = $1 AND p.path = $2 AND f.id = $3
  AND f.parent_id IS DISTINCT FROM p.id
"""
CLEAR_PARENT = "UPDATE folders SET parent_id = NULL WHERE account_id = $1 AND id = $2"
SAVE_STATE = """
UPDATE folders SET uidvalidity = $3, uidnext = $4, highestmodseq = $5, sync_phase = $6,
    initial_low_uid = $7, resets = $8, flagged_reason = $9, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
SET_EXISTS = "UPDATE folders SET server_exists = $3 WHERE account_id = $1 AND id = $2"
RECOUNT = """
UPDATE folders f SET total = c.total, unread = c.unread
FROM (SELECT count(*) AS total, count(*) FILTER (WHERE NOT seen) AS unread
      FROM messages WHERE folder_id = $2 AND expunged_at IS NULL) c
WHERE f.account_id = $1 AND f.id = $2 AND (f.total, f.unread) IS DISTINCT FROM (c.total, c.unread)
RETURNING f.id
"""


def _state(r: Record) -> FolderSyncState:
    phase = r["sync_phase"]
    return FolderSyncState(
        phase=Phase(phase) if phase in {p.value for p in Phase} else Phase.NEW,
        uidvalidity=r["uidvalidity"],
        uidnext=r["uidnext"],
        highestmodseq=int(r["highestmodseq"]) if r["highestmodseq"] is not None else None,
        low_uid=r["initial_low_uid"],
        resets=r["resets"],
        flagged_reason=r["flagged_reason"],
    )


async def list_folders(conn: Conn, *, account_id: UUID) -> list[StoredFolder]:
    rows = await conn.fetch(LIST, account_id)
    return [
        StoredFolder(
            id=r["id"],
            path=r["path"],
            raw_name=r["raw_name"],
            name=r["name"],
            delimiter=r["delimiter"],
            parent_id=r["parent_id"],
            role=FolderRole(r["role"]) if r["role"] else None,
            selectable=r["selectable"],
            state=_state(r),
            server_exists=r["server_exists"],
            pending_op=r["pending_op"],
            deleting=r["deleting"],
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class FolderSpec:
    path: str
    raw_name: str
    name: str
    delimiter: str | None
    role: FolderRole | None
    attributes: tuple[str, ...]
    selectable: bool
    parent_path: str | None


async def create(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, spec: FolderSpec
) -> int | None:
    folder_id = await conn.fetchval(
        INSERT, account_id, spec.path, spec.raw_name, spec.name, spec.delimiter,
        spec.role.value if spec.role else None, list(spec.attributes), spec.selectable,
    )  # fmt: skip
    if folder_id is not None:
        await changes.record(
            conn, account_id=account_id, modseq=modseq, kind="folder", change="created",
            object_ids=[folder_id],
        )  # fmt: skip
    return int(folder_id) if folder_id is not None else None


async def update_meta(
    conn: Conn,
    *,
    account_id: UUID,
    modseq: changes.ModseqSource,
    folder_id: int,
    spec: FolderSpec,
) -> None:
    status = await conn.execute(
        UPDATE_META, account_id, folder_id, spec.role.value if spec.role else None,
        list(spec.attributes), spec.selectable, spec.delimiter,
    )  # fmt: skip
    if status.endswith(" 1"):
        await changes.record(
            conn, account_id=account_id, modseq=modseq, kind="folder", change="updated",
            object_ids=[folder_id],
        )  # fmt: skip


async def rename(
    conn: Conn,
    *,
    account_id: UUID,
    modseq: changes.ModseqSource,
    folder_id: int,
    spec: FolderSpec,
) -> None:
    await conn.execute(RENAME, account_id, folder_id, spec.path, spec.raw_name, spec.name)
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="folder", change="updated",
        object_ids=[folder_id],
    )  # fmt: skip


async def delete(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, folder_ids: list[int]
) -> None:
    if not folder_ids:
        return
    message_ids = await conn.fetch(
        "SELECT id FROM messages WHERE account_id = $1 AND folder_id = ANY($2::bigint[])"
        " AND expunged_at IS NULL",
        account_id, folder_ids,
    )  # fmt: skip
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="destroyed",
        object_ids=[r["id"] for r in message_ids],
    )  # fmt: skip
    deleted = await conn.fetch(DELETE, account_id, folder_ids)
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="folder", change="destroyed",
        object_ids=[r["id"] for r in deleted],
    )  # fmt: skip


async def link_parent(
    conn: Conn, *, account_id: UUID, folder_id: int, parent_path: str | None
) -> None:
    if parent_path is None:
        await conn.execute(CLEAR_PARENT, account_id, folder_id)
    else:
        await conn.execute(SET_PARENTS, account_id, parent_path, folder_id)


async def save_state(
    conn: Conn, *, account_id: UUID, folder_id: int, state: FolderSyncState
) -> None:
    await conn.execute(
        SAVE_STATE, account_id, folder_id, state.uidvalidity, state.uidnext,
        state.highestmodseq, state.phase.value, state.low_uid, state.resets,
        state.flagged_reason,
    )  # fmt: skip


async def set_server_exists(conn: Conn, *, account_id: UUID, folder_id: int, exists: int) -> None:
    await conn.execute(SET_EXISTS, account_id, folder_id, exists)


async def recount(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, folder_id: int
) -> None:
    """Refresh the folder's counts; only a real change is logged (and allocates a modseq)."""
    changed = await conn.fetchval(RECOUNT, account_id, folder_id)
    if changed is not None:
        await changes.record(
            conn, account_id=account_id, modseq=modseq, kind="folder", change="updated",
            object_ids=[folder_id],
        )  # fmt: skip
