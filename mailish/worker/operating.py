"""The operation executor: applies an account's queued changes over IMAP, in order.

Every step is idempotent, because a worker can die between the IMAP command and the commit
that records it: a flag STORE can be repeated, a MOVE whose source UID is gone has already
happened, CREATE of an existing folder and DELETE of a missing one are successes. The
server's NO is final (the local change is reverted and the operation marked failed with the
server's reason); anything transient is retried with backoff, up to ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from asyncpg import Record

from mailish.domain.buckets import BucketLease
from mailish.domain.errors import MailishError, PermanentError
from mailish.mail.imap.connection import ImapError
from mailish.mail.imap.session import ImapSession
from mailish.observability import metrics
from mailish.observability.crashpoints import crash_point
from mailish.store import claims, drafts, local_changes, operations, views
from mailish.store.connecting import Pool
from mailish.worker.supervising import Backoff

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
WAIT_FOR_MOVE = dt.timedelta(seconds=2)

ROW = """
SELECT m.id, m.uid, m.folder_id, m.pending_from_folder, m.pending_from_uid,
    f.raw_name AS folder_raw, s.raw_name AS source_raw
FROM messages m JOIN folders f ON f.id = m.folder_id
LEFT JOIN folders s ON s.id = m.pending_from_folder
WHERE m.account_id = $1 AND m.id = $2
"""
FOLDER_RAW = "SELECT raw_name FROM folders WHERE account_id = $1 AND id = $2"


class _Later(Exception):
    """Not applicable yet (e.g. waiting for a move's new UID); try again shortly."""


@dataclass
class Executor:
    session: ImapSession
    pool: Pool
    lease: BucketLease
    account_id: UUID
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=300.0))
    #: Folders (raw names) whose server state the applied operations changed.
    touched: set[str] = field(default_factory=set)

    async def apply_due(self) -> int:
        """Apply every due operation of the account in id order; returns how many ended."""
        async with self.pool.acquire() as conn:
            due = await operations.due(conn, account_id=self.account_id)
        ended = 0
        for op in due:
            ended += await self._apply_one(op)
        return ended

    async def _apply_one(self, op: operations.Operation) -> int:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await operations.set_running(
                conn, account_id=self.account_id, operation_id=op.id, epoch=self.lease.epoch
            )
        crash_point("ops.claimed")
        metrics.user_operations.labels(status="running").inc()
        try:
            await self._imap(op)
        except _Later:
            await self._retry(op, "waiting for the server to report the moved message", None)
            return 0
        except ImapError as exc:
            await self._fail(op, exc.response.text or str(exc))
            return 1
        except PermanentError as exc:
            await self._fail(op, str(exc))
            return 1
        except MailishError as exc:
            if op.attempts + 1 >= MAX_ATTEMPTS:
                await self._fail(op, f"gave up after {op.attempts + 1} attempts: {exc}")
                return 1
            await self._retry(op, str(exc), self.backoff.delay(op.attempts))
            raise  # the connection is probably gone; the account loop reconnects
        crash_point("ops.applied")
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await operations.set_done(conn, account_id=self.account_id, operation_id=op.id)
        crash_point("ops.done")
        metrics.user_operations.labels(status="done").inc()
        return 1

    async def _imap(self, op: operations.Operation) -> None:
        data = op.payload
        if op.kind in {"flags", "move", "expunge"}:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(ROW, self.account_id, data["message_id"])
            if row is None:
                return  # the account or message is gone; nothing left to apply
            self.touched.update(n for n in (row["folder_raw"], row["source_raw"]) if n)
            if op.kind == "flags":
                await self._flags(row, data)
            elif op.kind == "move":
                await self._move(row)
            else:
                await self.session.select(row["folder_raw"], readonly=False)
                if row["uid"] > 0:
                    await self.session.store_flags([row["uid"]], "+FLAGS.SILENT", ["\\Deleted"])
                    crash_point("ops.expunge_flagged")
                    await self.session.expunge([row["uid"]])
            return
        if op.kind in {"save_draft", "delete_draft"}:
            await self._draft(op.kind, data["draft_id"])
            return
        if op.kind not in {"create_folder", "rename_folder", "delete_folder"}:
            raise PermanentError(f"unknown operation kind {op.kind!r}")
        async with self.pool.acquire() as conn:
            raw = await conn.fetchval(FOLDER_RAW, self.account_id, data["folder_id"])
        await self.session.unselect()
        if op.kind == "create_folder" and raw is not None:
            await _tolerate(self.session.create(raw), "ALREADYEXISTS")
            await self._finish_folder(data["folder_id"], drop=False)
        elif op.kind == "rename_folder":
            await self.session.rename(data["from"], data["to"])
            await self._finish_folder(data["folder_id"], drop=False)
        elif op.kind == "delete_folder":
            await _tolerate(self.session.delete(data["raw_name"]), "NONEXISTENT")
            await self._finish_folder(data["folder_id"], drop=True)

    async def _flags(self, r: Record, data: dict[str, Any]) -> None:
        if r["uid"] < 0:
            raise _Later
        uid = r["uid"]
        await self.session.select(r["folder_raw"], readonly=False)
        if data["add"]:
            await self.session.store_flags([uid], "+FLAGS.SILENT", data["add"])
        if data["remove"]:
            await self.session.store_flags([uid], "-FLAGS.SILENT", data["remove"])

    async def _move(self, r: Record) -> None:
        if r["pending_from_folder"] is None:
            return
        source_uid = r["pending_from_uid"]
        await self.session.select(r["source_raw"], readonly=False)
        still_there = await self.session.search_uids(b"UID %d" % source_uid)
        new_uid = None
        if source_uid in still_there:
            mapping = await self.session.move([source_uid], r["folder_raw"])
            new_uid = mapping.get(source_uid)
            crash_point("ops.moved")
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await local_changes.finish_move(
                conn,
                account_id=self.account_id,
                message_id=r["id"],
                uid=new_uid,
            )

    async def _draft(self, kind: str, draft_id: str) -> None:
        """Save: APPEND the latest version, then remove every other copy with its
        Message-ID (so a crash between the two leaves an extra copy, never none). Delete:
        remove every copy."""
        async with self.pool.acquire() as conn:
            folder = await views.role_folder(conn, account_id=self.account_id, role="drafts")
            latest = await drafts.get(conn, account_id=self.account_id, draft_id=draft_id)
        if folder is None:
            raise PermanentError("the account has no Drafts folder")
        self.touched.add(folder)
        keep: int | None = None
        if kind == "save_draft":
            if latest is None:
                return  # deleted or sent since; a later operation handles the folder
            keep = await self.session.append(folder, latest.raw, flags=["\\Draft", "\\Seen"])
        await self.session.select(folder, readonly=False)
        bare = draft_id.replace('"', "").replace("\\", "")
        copies = await self.session.search_uids(b'HEADER Message-ID "' + bare.encode() + b'"')
        if kind == "save_draft" and keep is None and copies:
            keep = max(copies)  # no UIDPLUS: the newest UID is the version just appended
        stale = [uid for uid in copies if uid != keep]
        if stale:
            await self.session.store_flags(stale, "+FLAGS.SILENT", ["\\Deleted"])
            await self.session.expunge(stale)

    async def _finish_folder(self, folder_id: int, *, drop: bool) -> None:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await local_changes.finish_folder(
                conn, account_id=self.account_id, folder_id=folder_id, drop=drop
            )

    async def _fail(self, op: operations.Operation, reason: str) -> None:
        log.warning("operation %d (%s) refused by the server: %s", op.id, op.kind, reason)
        if op.kind == "save_draft":
            metrics.send_errors.labels(reason="draft").inc()
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await local_changes.revert(conn, account_id=self.account_id, op=op)
            await operations.set_failed(
                conn, account_id=self.account_id, operation_id=op.id, error=reason
            )
        metrics.user_operations.labels(status="failed").inc()

    async def _retry(self, op: operations.Operation, reason: str, delay: float | None) -> None:
        wait = WAIT_FOR_MOVE if delay is None else dt.timedelta(seconds=delay)
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await operations.retry_later(
                conn, account_id=self.account_id, operation_id=op.id, error=reason, delay=wait
            )
        metrics.user_operations.labels(status="pending").inc()


async def _tolerate(call: Awaitable[None], code: str) -> None:
    """Await an IMAP call, treating a NO with response code ``code`` as success."""
    try:
        await call
    except ImapError as exc:
        if exc.response.code != code:
            raise
