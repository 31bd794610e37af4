"""The folders aggregate: the mirror of the server's mailbox list and each folder's sync state.

Every change to what the API shows (created, renamed, deleted, counts) is written with a
change-log row in the same fenced transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
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
# The mirror of a LIST writes every folder in one statement per kind of change (unnest), not
# one per folder: a first sync of a small account took ~40 statements for six folders.
_SPECS = """
SELECT u.path, u.raw_name, u.name, u.delimiter, u.role,
       ARRAY(SELECT jsonb_array_elements_text(u.attributes::jsonb)) AS attributes, u.selectable
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[])
     AS u(path, raw_name, name, delimiter, role, attributes, selectable)
"""
INSERT = f"""
INSERT INTO folders (account_id, path, raw_name, name, delimiter, role, attributes, selectable)
SELECT $1, s.* FROM ({_SPECS}) s
ON CONFLICT (account_id, path) DO NOTHING
RETURNING id, path
"""  # noqa: S608 - composed from the constant above, never from input
UPDATE_META = f"""
UPDATE folders f SET role = s.role, attributes = s.attributes, selectable = s.selectable,
    delimiter = s.delimiter, updated_at = now()
FROM ({_SPECS}) s
WHERE f.account_id = $1 AND f.path = s.path
  AND (f.role IS DISTINCT FROM s.role OR f.attributes <> s.attributes
       OR f.selectable <> s.selectable OR f.delimiter IS DISTINCT FROM s.delimiter)
RETURNING f.id
"""  # noqa: S608 - composed from the constant above, never from input
RENAME = """
UPDATE folders SET path = $3, raw_name = $4, name = $5, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
DELETE = "DELETE FROM folders WHERE account_id = $1 AND id = ANY($2::bigint[]) RETURNING id"
SET_PARENTS = """
UPDATE folders f SET parent_id = p.id
FROM unnest($2::text[], $3::text[]) AS u(path, parent_path)
     LEFT JOIN folders p ON p.account_id = $1 AND p.path = u.parent_path
WHERE f.account_id = $1 AND f.path = u.path AND f.parent_id IS DISTINCT FROM p.id
"""
SAVE_STATES = """
UPDATE folders f SET uidvalidity = u.uidvalidity, uidnext = u.uidnext,
    highestmodseq = u.highestmodseq, sync_phase = u.phase, initial_low_uid = u.low_uid,
    resets = u.resets, flagged_reason = u.flagged_reason, updated_at = now(),
    flagged_at = CASE WHEN u.phase = 'flagged' THEN coalesce(f.flagged_at, now()) END
FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::numeric[], $6::text[], $7::bigint[],
            $8::int[], $9::text[])
     AS u(id, uidvalidity, uidnext, highestmodseq, phase, low_uid, resets, flagged_reason)
WHERE f.account_id = $1 AND f.id = u.id
"""
# A tripped breaker is retried after its cool-down: from INITIAL with a fresh reset count,
# so the next pass re-maps by stable id (or trips again after MAX_RESETS more changes).
RETRY_FLAGGED = """
UPDATE folders SET sync_phase = 'initial', resets = 0, flagged_reason = NULL, flagged_at = NULL,
    updated_at = now()
WHERE account_id = $1 AND sync_phase = 'flagged' AND flagged_at < now() - $2::interval
RETURNING id
"""
SET_EXISTS = """
UPDATE folders f SET server_exists = u.n
FROM unnest($2::bigint[], $3::int[]) AS u(id, n)
WHERE f.account_id = $1 AND f.id = u.id AND f.server_exists <> u.n
"""
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


def _spec_columns(specs: Sequence[FolderSpec]) -> list[list[object]]:
    return [
        [s.path for s in specs],
        [s.raw_name for s in specs],
        [s.name for s in specs],
        [s.delimiter for s in specs],
        [s.role.value if s.role else None for s in specs],
        [json.dumps(list(s.attributes)) for s in specs],  # one JSON array each
        [s.selectable for s in specs],
    ]


async def create(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, specs: Sequence[FolderSpec]
) -> dict[str, int]:
    """Insert the folders not stored yet; returns path -> id of those it created."""
    if not specs:
        return {}
    rows = await conn.fetch(INSERT, account_id, *_spec_columns(specs))
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="folder", change="created",
        object_ids=[r["id"] for r in rows],
    )  # fmt: skip
    return {r["path"]: int(r["id"]) for r in rows}


async def update_meta(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, specs: Sequence[FolderSpec]
) -> None:
    """Bring role, attributes, selectability and delimiter of stored folders (by path) up
    to ``specs``; only folders that really changed are logged."""
    if not specs:
        return
    rows = await conn.fetch(UPDATE_META, account_id, *_spec_columns(specs))
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="folder", change="updated",
        object_ids=[r["id"] for r in rows],
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


async def link_parents(conn: Conn, *, account_id: UUID, specs: Sequence[FolderSpec]) -> None:
    """Point each folder (by path) at its parent's row; none when the parent is not stored."""
    if specs:
        await conn.execute(
            SET_PARENTS, account_id, [s.path for s in specs], [s.parent_path for s in specs]
        )


async def save_states(
    conn: Conn, *, account_id: UUID, states: Mapping[int, FolderSyncState]
) -> None:
    """Store each folder's (by id) sync checkpoint."""
    if not states:
        return
    items = list(states.items())
    await conn.execute(
        SAVE_STATES, account_id, [i for i, _ in items],
        [s.uidvalidity for _, s in items], [s.uidnext for _, s in items],
        [s.highestmodseq for _, s in items], [s.phase.value for _, s in items],
        [s.low_uid for _, s in items], [s.resets for _, s in items],
        [s.flagged_reason for _, s in items],
    )  # fmt: skip


async def save_state(
    conn: Conn, *, account_id: UUID, folder_id: int, state: FolderSyncState
) -> None:
    await save_states(conn, account_id=account_id, states={folder_id: state})


async def retry_flagged(
    conn: Conn, *, account_id: UUID, modseq: changes.ModseqSource, older_than: dt.timedelta
) -> int:
    """Clear the breaker of folders flagged longer than ``older_than`` ago (logged as folder
    updates: their ``sync_problem`` goes away); returns how many."""
    rows = await conn.fetch(RETRY_FLAGGED, account_id, older_than)
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="folder", change="updated",
        object_ids=[r["id"] for r in rows],
    )  # fmt: skip
    return len(rows)


async def set_server_exists(conn: Conn, *, account_id: UUID, exists: Mapping[int, int]) -> None:
    """Record how many messages the server holds in each folder (by id)."""
    if exists:
        await conn.execute(SET_EXISTS, account_id, list(exists), list(exists.values()))


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
