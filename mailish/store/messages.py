"""The messages aggregate: raw blobs, parsed summaries, flags, tombstones and remaps.

Writes are bulk (one round trip per statement per batch) and idempotent: storing a UID that
is already stored does nothing, expunging twice does nothing. Each function expects to run
inside the caller's fenced transaction, which also supplies the change-log ``modseq``.

Moves keep ids: an expunged row lingers as a tombstone; a message that then appears in
another folder with the same stable id adopts the tombstone's row (and id). If the new copy
was seen first, the expunge merges instead: the old row moves to the new place and the
just-created duplicate is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from uuid import UUID

from mailish.domain.messages import SyncedMessage, address_json
from mailish.store import changes
from mailish.store.connecting import Conn

MERGE_WINDOW = dt.timedelta(minutes=30)
REMAP_SHIFT = 1 << 40  # moves UIDs out of the way during a remap (UIDs are < 2^32)

INSERT_BLOBS = """
INSERT INTO message_blobs (account_id, sha256, size, data)
SELECT $1, b.sha, b.size, b.data
FROM unnest($2::bytea[], $3::int[], $4::bytea[]) AS b(sha, size, data)
ON CONFLICT (account_id, sha256) DO NOTHING
"""
# A message the user moved away is still in its old folder on the server until the move is
# applied; for sync it counts as present there (so it is not fetched again).
PRESENT = """
SELECT uid FROM messages WHERE folder_id = $1 AND uid = ANY($2::bigint[]) AND expunged_at IS NULL
UNION ALL
SELECT pending_from_uid FROM messages
WHERE pending_from_folder = $1 AND pending_from_uid = ANY($2::bigint[])
"""
LIVE_IN_RANGE = """
SELECT uid FROM messages
WHERE folder_id = $1 AND uid >= $2 AND uid < $3 AND expunged_at IS NULL
UNION ALL
SELECT pending_from_uid FROM messages
WHERE pending_from_folder = $1 AND pending_from_uid >= $2 AND pending_from_uid < $3
"""
COUNT_LIVE = """
SELECT (SELECT count(*) FROM messages WHERE folder_id = $1 AND expunged_at IS NULL AND uid > 0)
     + (SELECT count(*) FROM messages WHERE pending_from_folder = $1)
"""
# Rows a newly seen message should take over instead of getting a new id: a tombstone (moved
# by another client), or a row moved here by our own queued MOVE whose new UID is not known.
TOMBSTONES_FOR = """
SELECT DISTINCT ON (stable_id) id, stable_id FROM messages
WHERE account_id = $1 AND stable_id = ANY($2::text[])
  AND (expunged_at IS NOT NULL OR (folder_id = $3 AND uid < 0 AND pending_from_folder IS NULL))
ORDER BY stable_id, (expunged_at IS NULL) DESC, expunged_at DESC
"""
ADOPT = """
UPDATE messages SET folder_id = $3, uid = $4, flags = $5, seen = $6, flagged = $7,
    server_modseq = $8, expunged_at = NULL, updated_at = now()
WHERE account_id = $1 AND id = $2
"""
INSERT_MESSAGE = """
INSERT INTO messages (account_id, folder_id, uid, stable_id, sha256, size, flags, seen, flagged,
    server_modseq, internaldate, sent_date, sort_date, subject, from_addrs, to_addrs, cc_addrs,
    header_message_id, in_reply_to, references_ids, snippet, has_attachments, parse_defects,
    search_pending)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $24)
ON CONFLICT (folder_id, uid) WHERE expunged_at IS NULL DO NOTHING
"""
IDS_FOR_UIDS = """
SELECT id, uid FROM messages
WHERE folder_id = $1 AND uid = ANY($2::bigint[]) AND expunged_at IS NULL
"""
INSERT_ATTACHMENT = """
INSERT INTO attachments (account_id, message_id, part_id, filename, content_type, size,
    content_id, inline)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (message_id, part_id) DO NOTHING
"""
SET_FLAGS = """
UPDATE messages m SET flags = v.flags, seen = '\\Seen' = ANY(v.flags),
    flagged = '\\Flagged' = ANY(v.flags), updated_at = now()
FROM (SELECT unnest($2::bigint[]) AS uid, string_to_array(unnest($3::text[]), ' ') AS flags) v
WHERE m.folder_id = $1 AND m.uid = v.uid AND m.expunged_at IS NULL
  AND m.flags IS DISTINCT FROM coalesce(v.flags, '{}')
RETURNING m.id
"""
TOMBSTONE = """
UPDATE messages SET expunged_at = now(), updated_at = now()
WHERE folder_id = $1 AND uid = ANY($2::bigint[]) AND expunged_at IS NULL
RETURNING id, stable_id
"""
RECENT_TWIN = """
SELECT id, folder_id, uid, flags, seen, flagged, server_modseq FROM messages
WHERE account_id = $1 AND stable_id = $2 AND id <> $3 AND expunged_at IS NULL
  AND created_at > now() - $4::interval
ORDER BY created_at DESC LIMIT 1
"""
DELETE_ROW = "DELETE FROM messages WHERE account_id = $1 AND id = $2"
INDEX_PENDING = """
UPDATE messages SET search = to_tsvector('simple', search_pending), search_pending = NULL
WHERE id IN (SELECT id FROM messages WHERE account_id = $1 AND search_pending IS NOT NULL
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
"""
PURGE = """
DELETE FROM messages WHERE account_id = $1 AND expunged_at < now() - $2::interval
"""
PURGE_BLOBS = """
DELETE FROM message_blobs b WHERE b.account_id = $1
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.account_id = $1 AND m.sha256 = b.sha256)
  AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.account_id = $1 AND u.sha256 = b.sha256)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.account_id = $1 AND o.raw_sha256 = b.sha256)
  AND NOT EXISTS (SELECT 1 FROM drafts d WHERE d.account_id = $1 AND d.raw_sha256 = b.sha256)
"""
SHIFT_UIDS = """
UPDATE messages SET uid = uid + $2 WHERE folder_id = $1 AND expunged_at IS NULL AND uid < $2
"""
LIVE_STABLE = """
SELECT id, uid, stable_id FROM messages WHERE folder_id = $1 AND expunged_at IS NULL ORDER BY id
"""
REPOINT = """
UPDATE messages SET uid = $3, flags = $4, seen = '\\Seen' = ANY($4::text[]),
    flagged = '\\Flagged' = ANY($4::text[]), updated_at = now()
WHERE account_id = $1 AND id = $2
"""


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(flags)


async def present(conn: Conn, *, folder_id: int, uids: Sequence[int]) -> set[int]:
    return {r["uid"] for r in await conn.fetch(PRESENT, folder_id, list(uids))}


async def live_uids(conn: Conn, *, folder_id: int, low: int, below: int) -> set[int]:
    return {r["uid"] for r in await conn.fetch(LIVE_IN_RANGE, folder_id, low, below)}


async def count_live(conn: Conn, *, folder_id: int) -> int:
    return int(await conn.fetchval(COUNT_LIVE, folder_id))


async def store_batch(
    conn: Conn,
    *,
    account_id: UUID,
    folder_id: int,
    modseq: int,
    batch: Sequence[SyncedMessage],
) -> int:
    """Store messages (blobs once per hash); returns how many rows were created or adopted."""
    if not batch:
        return 0
    await conn.execute(
        INSERT_BLOBS, account_id, [m.sha256 for m in batch], [len(m.raw) for m in batch],
        [m.raw for m in batch],
    )  # fmt: skip
    tombstones = {
        r["stable_id"]: r["id"]
        for r in await conn.fetch(
            TOMBSTONES_FOR, account_id, [m.stable_id for m in batch], folder_id
        )
    }
    adopted: list[int] = []
    fresh: list[SyncedMessage] = []
    for message in batch:
        row_id = tombstones.pop(message.stable_id, None)
        if row_id is None:
            fresh.append(message)
            continue
        await conn.execute(
            ADOPT, account_id, row_id, folder_id, message.uid, list(message.flags),
            message.seen, message.flagged, message.server_modseq,
        )  # fmt: skip
        adopted.append(row_id)
    await conn.executemany(INSERT_MESSAGE, [_row(account_id, folder_id, m) for m in fresh])
    ids = {
        r["uid"]: r["id"] for r in await conn.fetch(IDS_FOR_UIDS, folder_id, [m.uid for m in fresh])
    }
    attachment_rows = [
        (account_id, ids[m.uid], a.part_id, a.filename, a.content_type, a.size, a.content_id,
         a.inline)
        for m in fresh if m.uid in ids
        for a in m.parsed.attachments
    ]  # fmt: skip
    if attachment_rows:
        await conn.executemany(INSERT_ATTACHMENT, attachment_rows)
    created = [ids[m.uid] for m in fresh if m.uid in ids]
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="created",
        object_ids=created,
    )  # fmt: skip
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="updated",
        object_ids=adopted,
    )  # fmt: skip
    return len(created) + len(adopted)


def _row(account_id: UUID, folder_id: int, m: SyncedMessage) -> tuple[object, ...]:
    p = m.parsed
    return (
        account_id, folder_id, m.uid, m.stable_id, m.sha256, len(m.raw), list(m.flags), m.seen,
        m.flagged, m.server_modseq, m.internaldate, p.date, m.sort_date, p.subject,
        address_json(p.from_), address_json(p.to), address_json(p.cc), p.message_id,
        list(p.in_reply_to), list(p.references), p.snippet, p.has_attachments,
        list(p.defects), m.search_text(),
    )  # fmt: skip


async def set_flags(
    conn: Conn,
    *,
    account_id: UUID,
    folder_id: int,
    modseq: int,
    flags_by_uid: dict[int, tuple[str, ...]],
) -> int:
    if not flags_by_uid:
        return 0
    uids = list(flags_by_uid)
    rows = await conn.fetch(
        SET_FLAGS, folder_id, uids, [_flags_text(flags_by_uid[u]) for u in uids]
    )
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="updated",
        object_ids=[r["id"] for r in rows],
    )  # fmt: skip
    return len(rows)


async def expunge(
    conn: Conn, *, account_id: UUID, folder_id: int, modseq: int, uids: Iterable[int]
) -> int:
    """Tombstone expunged UIDs; merge into a just-created twin elsewhere (a move seen late)."""
    rows = await conn.fetch(TOMBSTONE, folder_id, list(uids))
    destroyed: list[int] = []
    moved: list[int] = []
    for row in rows:
        twin = await conn.fetchrow(
            RECENT_TWIN, account_id, row["stable_id"], row["id"], MERGE_WINDOW
        )
        if twin is None:
            destroyed.append(row["id"])
            continue
        await conn.execute(DELETE_ROW, account_id, twin["id"])
        await conn.execute(
            ADOPT, account_id, row["id"], twin["folder_id"], twin["uid"], twin["flags"],
            twin["seen"], twin["flagged"], twin["server_modseq"],
        )  # fmt: skip
        destroyed.append(twin["id"])
        moved.append(row["id"])
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="destroyed",
        object_ids=destroyed,
    )  # fmt: skip
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="updated",
        object_ids=moved,
    )  # fmt: skip
    return len(rows)


async def remap(
    conn: Conn,
    *,
    account_id: UUID,
    folder_id: int,
    modseq: int,
    server: dict[str, list[tuple[int, tuple[str, ...]]]],
) -> tuple[int, int]:
    """Re-point live rows to new UIDs by stable id (server: stable id → [(uid, flags)]);
    rows with no match are tombstoned. Returns (kept, dropped)."""
    rows = await conn.fetch(LIVE_STABLE, folder_id)
    await conn.execute(SHIFT_UIDS, folder_id, REMAP_SHIFT)
    available = {sid: list(entries) for sid, entries in server.items()}
    kept: list[int] = []
    dropped: list[int] = []
    for row in rows:
        entries = available.get(row["stable_id"])
        if entries:
            uid, flags = entries.pop(0)
            await conn.execute(REPOINT, account_id, row["id"], uid, list(flags))
            kept.append(row["id"])
        else:
            dropped.append(row["uid"] + REMAP_SHIFT)
    if dropped:
        await expunge(conn, account_id=account_id, folder_id=folder_id, modseq=modseq, uids=dropped)
    await changes.record(
        conn, account_id=account_id, modseq=modseq, kind="message", change="updated",
        object_ids=kept,
    )  # fmt: skip
    return len(kept), len(dropped)


async def purge_tombstones(conn: Conn, *, account_id: UUID, older_than: dt.timedelta) -> None:
    await conn.execute(PURGE, account_id, older_than)
    await conn.execute(PURGE_BLOBS, account_id)


async def index_pending(conn: Conn, *, account_id: UUID, limit: int = 500) -> int:
    """Build the full-text vectors of up to ``limit`` messages; returns how many."""
    status: str = await conn.execute(INDEX_PENDING, account_id, limit)
    return int(status.rsplit(" ", 1)[-1])
