"""Optimistic local changes made by the API, their completion and their reversal.

Each API change is one transaction: lock the row, change it, write the change-log row and
enqueue the operation. The worker later applies the operation on IMAP and either completes
it here (``finish_*``) or, when the server refuses for good, undoes it (``revert``), again
with change-log rows, so clients see the change and its reversal in ``/v1/changes``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from mailish.domain.messages import normalise_flags
from mailish.domain.utf7 import encode_mailbox_name
from mailish.store import changes, folders, operations
from mailish.store.connecting import Conn


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


MESSAGE_FOR_UPDATE = """
SELECT m.id, m.folder_id, m.uid, m.flags, m.seen, m.flagged, m.pending_from_folder, f.role
FROM messages m JOIN folders f ON f.id = m.folder_id
WHERE m.account_id = $1 AND m.id = $2 AND m.expunged_at IS NULL AND NOT f.deleting
FOR UPDATE OF m
"""
FOLDER = """
SELECT id, path, raw_name, name, delimiter, role, pending_op, deleting FROM folders
WHERE account_id = $1 AND id = $2 AND NOT deleting
"""
TRASH = "SELECT id FROM folders WHERE account_id = $1 AND role = 'trash' AND NOT deleting"
SET_FLAGS = """
UPDATE messages SET flags = $3, seen = '\\Seen' = ANY($3::text[]),
    flagged = '\\Flagged' = ANY($3::text[]), updated_at = now()
WHERE account_id = $1 AND id = $2
"""
MOVE_LOCAL = """
UPDATE messages SET pending_from_folder = folder_id, pending_from_uid = uid, folder_id = $3,
    uid = -id, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
TOMBSTONE = "UPDATE messages SET expunged_at = now() WHERE account_id = $1 AND id = $2"
UNTOMBSTONE = "UPDATE messages SET expunged_at = NULL WHERE account_id = $1 AND id = $2"
UNDO_MOVE = """
UPDATE messages SET folder_id = pending_from_folder, uid = pending_from_uid,
    pending_from_folder = NULL, pending_from_uid = NULL, updated_at = now()
WHERE account_id = $1 AND id = $2 AND pending_from_folder IS NOT NULL
RETURNING folder_id
"""
FINISH_MOVE = """
UPDATE messages SET uid = coalesce($3, uid), pending_from_folder = NULL,
    pending_from_uid = NULL, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
# The moved message, already stored by sync under its new UID in the target folder (the worker
# died between MOVE and recording it, and sync ran first after the restart).
TWIN_IN_TARGET = """
SELECT t.id, t.uid, t.flags, t.seen, t.flagged, t.server_modseq
FROM messages m JOIN messages t ON t.account_id = m.account_id AND t.folder_id = m.folder_id
    AND t.stable_id = m.stable_id AND t.id <> m.id AND t.uid > 0 AND t.expunged_at IS NULL
WHERE m.account_id = $1 AND m.id = $2 AND m.uid < 0
ORDER BY t.created_at DESC LIMIT 1
"""
DROP_MESSAGE = "DELETE FROM messages WHERE account_id = $1 AND id = $2"
TAKE_OVER = """
UPDATE messages SET uid = $3, flags = $4, seen = $5, flagged = $6, server_modseq = $7,
    pending_from_folder = NULL, pending_from_uid = NULL, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
INSERT_FOLDER = """
INSERT INTO folders (account_id, path, raw_name, name, delimiter, parent_id, selectable)
VALUES ($1, $2, $3, $4, $5, $6, true) RETURNING id
"""
SET_PENDING = "UPDATE folders SET pending_op = $3 WHERE account_id = $1 AND id = $2"
SUBTREE = """
SELECT id, path, raw_name, name FROM folders
WHERE account_id = $1 AND (id = $2 OR left(path, length($3) + 1) = $3 || $4)
"""
SET_NAMES = """
UPDATE folders SET path = $3, raw_name = $4, name = $5, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
MARK_DELETING = "UPDATE folders SET deleting = $3 WHERE account_id = $1 AND id = $2"
DROP_FOLDER = "DELETE FROM folders WHERE account_id = $1 AND id = $2"


async def _record(conn: Conn, account_id: UUID, kind: str, change: str, ids: list[int]) -> None:
    modseq = await changes.next_modseq(conn, account_id=account_id)
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind=kind, change=change, object_ids=ids
    )
    if kind == "message":
        for folder_id in await _folders_of(conn, account_id, ids):
            await folders.recount(conn, account_id=account_id, modseq=modseq, folder_id=folder_id)


async def _folders_of(conn: Conn, account_id: UUID, message_ids: list[int]) -> list[int]:
    rows = await conn.fetch(
        "SELECT DISTINCT unnest(ARRAY[folder_id, pending_from_folder]) AS f FROM messages"
        " WHERE account_id = $1 AND id = ANY($2::bigint[])",
        account_id, message_ids,
    )  # fmt: skip
    return [r["f"] for r in rows if r["f"] is not None]


async def message(conn: Conn, *, account_id: UUID, message_id: int) -> Any:
    row = await conn.fetchrow(MESSAGE_FOR_UPDATE, account_id, message_id)
    if row is None:
        raise NotFound(f"message {message_id}")
    return row


async def set_flags(
    conn: Conn, *, account_id: UUID, message_id: int, seen: bool | None, flagged: bool | None
) -> int | None:
    row = await message(conn, account_id=account_id, message_id=message_id)
    current = set(row["flags"])
    wanted = set(current)
    for flag, value in (("\\Seen", seen), ("\\Flagged", flagged)):
        if value is True:
            wanted.add(flag)
        elif value is False:
            wanted.discard(flag)
    if wanted == current:
        return None
    await conn.execute(SET_FLAGS, account_id, message_id, list(normalise_flags(frozenset(wanted))))
    await _record(conn, account_id, "message", "updated", [message_id])
    return await operations.enqueue(
        conn, account_id=account_id, kind="flags",
        payload={"message_id": message_id, "add": sorted(wanted - current),
                 "remove": sorted(current - wanted)},
        revert={"flags": sorted(current)},
    )  # fmt: skip


async def move(conn: Conn, *, account_id: UUID, message_id: int, to_folder_id: int) -> int | None:
    row = await message(conn, account_id=account_id, message_id=message_id)
    if row["folder_id"] == to_folder_id:
        return None
    if row["pending_from_folder"] is not None:
        raise Conflict("a move of this message is still being applied")
    target = await conn.fetchrow(FOLDER, account_id, to_folder_id)
    if target is None:
        raise NotFound(f"folder {to_folder_id}")
    await conn.execute(MOVE_LOCAL, account_id, message_id, to_folder_id)
    await _record(conn, account_id, "message", "updated", [message_id])
    return await operations.enqueue(
        conn, account_id=account_id, kind="move",
        payload={"message_id": message_id, "to_folder_id": to_folder_id}, revert={},
    )  # fmt: skip


async def delete(conn: Conn, *, account_id: UUID, message_id: int) -> int:
    """Move to Trash; inside Trash (or with no Trash folder), expunge."""
    row = await message(conn, account_id=account_id, message_id=message_id)
    trash = await conn.fetchval(TRASH, account_id)
    if trash is not None and row["role"] != "trash":
        op = await move(conn, account_id=account_id, message_id=message_id, to_folder_id=trash)
        assert op is not None
        return op
    if row["pending_from_folder"] is not None:
        raise Conflict("a move of this message is still being applied")
    await conn.execute(TOMBSTONE, account_id, message_id)
    await _record(conn, account_id, "message", "destroyed", [message_id])
    return await operations.enqueue(
        conn, account_id=account_id, kind="expunge",
        payload={"message_id": message_id}, revert={},
    )  # fmt: skip


async def create_folder(
    conn: Conn, *, account_id: UUID, name: str, parent_id: int | None, default_delimiter: str
) -> tuple[int, int]:
    parent = None
    if parent_id is not None:
        parent = await conn.fetchrow(FOLDER, account_id, parent_id)
        if parent is None:
            raise NotFound(f"folder {parent_id}")
    delimiter = (parent["delimiter"] if parent else None) or default_delimiter
    if not name.strip() or delimiter in name or len(name) > 200:
        raise ValueError(f"folder names must be 1-200 characters without {delimiter!r}")
    path = f"{parent['path']}{delimiter}{name}" if parent else name
    try:
        folder_id = await conn.fetchval(
            INSERT_FOLDER, account_id, path, encode_mailbox_name(path), name, delimiter,
            parent_id,
        )  # fmt: skip
    except Exception as exc:  # unique violation: the path exists
        if "unique" in str(exc).lower():
            raise Conflict(f"folder {path!r} already exists") from exc
        raise
    await _record(conn, account_id, "folder", "created", [folder_id])
    op = await operations.enqueue(
        conn, account_id=account_id, kind="create_folder",
        payload={"folder_id": folder_id}, revert={},
    )  # fmt: skip
    await conn.execute(SET_PENDING, account_id, folder_id, op)
    return folder_id, op


async def rename_folder(conn: Conn, *, account_id: UUID, folder_id: int, name: str) -> int:
    folder = await conn.fetchrow(FOLDER, account_id, folder_id)
    if folder is None:
        raise NotFound(f"folder {folder_id}")
    if folder["role"] == "inbox":
        raise ValueError("INBOX cannot be renamed")
    delimiter = folder["delimiter"] or "/"
    if not name.strip() or delimiter in name or len(name) > 200:
        raise ValueError(f"folder names must be 1-200 characters without {delimiter!r}")
    old_path = folder["path"]
    new_path = old_path[: len(old_path) - len(folder["name"])] + name
    subtree = await conn.fetch(SUBTREE, account_id, folder_id, old_path, delimiter)
    try:
        for item in subtree:
            path = new_path + item["path"][len(old_path) :]
            leaf = name if item["id"] == folder_id else item["name"]
            await conn.execute(
                SET_NAMES, account_id, item["id"], path, encode_mailbox_name(path), leaf
            )
    except Exception as exc:  # unique violation: a folder already has one of the new paths
        if "unique" in str(exc).lower():
            raise Conflict(f"folder {new_path!r} already exists") from exc
        raise
    await _record(conn, account_id, "folder", "updated", [r["id"] for r in subtree])
    op = await operations.enqueue(
        conn, account_id=account_id, kind="rename_folder",
        payload={"folder_id": folder_id, "from": folder["raw_name"],
                 "to": encode_mailbox_name(new_path)},
        revert={"names": [[r["id"], r["path"], r["raw_name"], r["name"]] for r in subtree]},
    )  # fmt: skip
    await conn.execute(SET_PENDING, account_id, folder_id, op)
    return op


async def delete_folder(conn: Conn, *, account_id: UUID, folder_id: int) -> int:
    folder = await conn.fetchrow(FOLDER, account_id, folder_id)
    if folder is None:
        raise NotFound(f"folder {folder_id}")
    if folder["role"] == "inbox":
        raise ValueError("INBOX cannot be deleted")
    await conn.execute(MARK_DELETING, account_id, folder_id, True)
    await _record(conn, account_id, "folder", "destroyed", [folder_id])
    op = await operations.enqueue(
        conn, account_id=account_id, kind="delete_folder",
        payload={"folder_id": folder_id, "raw_name": folder["raw_name"]}, revert={},
    )  # fmt: skip
    await conn.execute(SET_PENDING, account_id, folder_id, op)
    return op


async def finish_move(conn: Conn, *, account_id: UUID, message_id: int, uid: int | None) -> None:
    """Record the moved message's new UID. ``None``: the MOVE had already happened (its worker
    died before this commit) and the UID is unknown. Sync adopts the row when it meets the
    message in the target folder; if sync met it first, the row it created is a twin: it is
    dropped and this row, with the id clients know, takes its UID and flags."""
    twin = None if uid is not None else await conn.fetchrow(TWIN_IN_TARGET, account_id, message_id)
    if twin is None:
        await conn.execute(FINISH_MOVE, account_id, message_id, uid)
        return
    await conn.execute(DROP_MESSAGE, account_id, twin["id"])
    await conn.execute(
        TAKE_OVER, account_id, message_id, twin["uid"], twin["flags"], twin["seen"],
        twin["flagged"], twin["server_modseq"],
    )  # fmt: skip
    await _record(conn, account_id, "message", "destroyed", [twin["id"]])
    await _record(conn, account_id, "message", "updated", [message_id])


async def finish_folder(conn: Conn, *, account_id: UUID, folder_id: int, drop: bool) -> None:
    if drop:
        await conn.execute(DROP_FOLDER, account_id, folder_id)
    else:
        await conn.execute(SET_PENDING, account_id, folder_id, None)


async def revert(conn: Conn, *, account_id: UUID, op: operations.Operation) -> None:
    """Undo an operation's optimistic change after the server refused it for good."""
    data, undo = op.payload, op.revert or {}
    if op.kind == "flags":
        await conn.execute(SET_FLAGS, account_id, data["message_id"], undo["flags"])
        await _record(conn, account_id, "message", "updated", [data["message_id"]])
    elif op.kind == "move":
        await conn.execute(UNDO_MOVE, account_id, data["message_id"])
        await _record(conn, account_id, "message", "updated", [data["message_id"]])
    elif op.kind == "expunge":
        await conn.execute(UNTOMBSTONE, account_id, data["message_id"])
        await _record(conn, account_id, "message", "created", [data["message_id"]])
    elif op.kind == "create_folder":
        await conn.execute(DROP_FOLDER, account_id, data["folder_id"])
        await _record(conn, account_id, "folder", "destroyed", [data["folder_id"]])
    elif op.kind == "rename_folder":
        for folder_id, path, raw_name, name in undo["names"]:
            await conn.execute(SET_NAMES, account_id, folder_id, path, raw_name, name)
        await conn.execute(SET_PENDING, account_id, data["folder_id"], None)
        await _record(conn, account_id, "folder", "updated", [r[0] for r in undo["names"]])
    elif op.kind == "delete_folder":
        await conn.execute(MARK_DELETING, account_id, data["folder_id"], False)
        await conn.execute(SET_PENDING, account_id, data["folder_id"], None)
        await _record(conn, account_id, "folder", "created", [data["folder_id"]])
