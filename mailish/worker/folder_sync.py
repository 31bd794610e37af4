"""The thin async driver of ``mailish.domain.syncing`` for one folder.

It runs each command over IMAP and PostgreSQL and reports what it saw; every decision is the
state machine's. Each write is one short transaction fenced by the bucket lease, and a
``Store`` commits its messages together with the checkpoint the machine attached, so a crash
between any two commands resumes without loss or duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from uuid import UUID

from mailish.domain import messages as domain_messages
from mailish.domain import syncing as sm
from mailish.domain.buckets import BucketLease
from mailish.domain.errors import Fenced
from mailish.mail.imap.session import FetchedMessage, ImapSession
from mailish.observability import metrics
from mailish.observability.crashpoints import crash_point
from mailish.store import accounts, changes, claims, folders, messages
from mailish.store.connecting import Conn, Pool
from mailish.store.folders import StoredFolder

log = logging.getLogger(__name__)
REMAP_CHUNK = 500
DEFAULT_BATCH_BYTES = 16 << 20


def pieces(
    store: sm.Store, sizes: dict[int, int], budget: int
) -> list[tuple[tuple[int, ...], sm.FolderSyncState | None]]:
    """``store``'s UIDs in runs of at most ``budget`` bytes (at least one UID each); only the
    last run carries the checkpoint. UIDs of unknown size (expunged meanwhile) cost nothing."""
    runs: list[list[int]] = [[]]
    used = 0
    for uid in store.uids:
        size = sizes.get(uid, 0)
        if runs[-1] and used + size > budget:
            runs.append([])
            used = 0
        runs[-1].append(uid)
        used += size
    return [(tuple(run), store.then if i == len(runs) - 1 else None) for i, run in enumerate(runs)]


@dataclass
class FolderSync:
    session: ImapSession
    pool: Pool
    lease: BucketLease
    account_id: UUID
    folder: StoredFolder
    batch: int = sm.DEFAULT_BATCH
    #: A batch whose messages add up to more bytes is fetched and committed in pieces (the
    #: checkpoint moves with the last piece), so a folder of large mail cannot hold a whole
    #: batch of it in memory. A single message larger than this is fetched alone.
    batch_bytes: int = DEFAULT_BATCH_BYTES
    on_progress: Callable[[int], None] | None = None

    async def run_pass(self) -> sm.FolderSyncState:
        machine, commands = sm.start(self.folder.state, batch=self.batch)
        while True:
            observation: sm.Observation = sm.Done()
            stores = [c for c in commands if isinstance(c, sm.Store)]
            if stores and len(stores) == len(commands):
                observation = sm.Stored(await self._store_pipelined(stores))
            else:
                for command in commands:
                    observation = await self._execute(command)
            if machine.done:
                return machine.state
            machine, commands = sm.step(machine, observation)
            if machine.done and not commands:
                return machine.state

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[Conn, changes.LazyModseq]]:
        try:
            async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
                yield conn, changes.LazyModseq(conn, self.account_id)
        except Fenced:
            metrics.fenced_writes.inc()
            raise
        except Exception:
            metrics.store_errors.labels(kind="message").inc()
            raise

    async def _execute(self, command: sm.Command) -> sm.Observation:
        match command:
            case sm.Open(known):
                return await self._open(known)
            case sm.Search(low, high):
                top = b"*" if high is None else str(high).encode()
                found = await self.session.search_uids(b"UID %d:%s" % (low, top))
                return sm.Found(tuple(found))
            case sm.Store(uids, then):
                return sm.Stored(await self._store(uids, then))
            case sm.Apply(changed, vanished):
                await self._apply({c.uid: c.flags for c in changed}, vanished)
            case sm.SyncFlags(below, since):
                if below > 1:
                    flags, vanished = await self.session.fetch_flags(
                        b"1:%d" % (below - 1), changedsince=since
                    )
                    await self._apply({f.uid: f.flags for f in flags}, vanished)
            case sm.Diff(low, below):
                return await self._diff(low, below)
            case sm.Expunge(uids):
                await self._apply({}, uids)
            case sm.Remap(_):
                await self._remap()
            case sm.Save(state):
                async with self._write() as (conn, modseq):
                    await folders.save_state(
                        conn, account_id=self.account_id, folder_id=self.folder.id, state=state
                    )
                    if state.flagged_reason and not self.folder.state.flagged_reason:
                        await changes.record(  # the app shows the folder's sync_problem
                            conn, account_id=self.account_id, modseq=modseq.get,
                            kind="folder", change="updated", object_ids=[self.folder.id],
                        )  # fmt: skip
                    await folders.recount(
                        conn, account_id=self.account_id, modseq=modseq.get,
                        folder_id=self.folder.id,
                    )  # fmt: skip
                    await accounts.refresh_progress(conn, account_id=self.account_id)  # type: ignore[arg-type]
                crash_point("sync.saved")
        return sm.Done()

    async def _open(self, known: tuple[int, int] | None) -> sm.Opened:
        selected = await self.session.select(self.folder.raw_name, readonly=True, known=known)
        crash_point("sync.selected")
        used_qresync = (
            known is not None and self.session.qresync and known[0] == selected.uidvalidity
        )
        local = 0  # the machine compares counts of synced folders without QRESYNC only
        if self.folder.state.phase is sm.Phase.SYNCED and not used_qresync:
            async with self.pool.acquire() as conn:
                local = await messages.count_live(conn, folder_id=self.folder.id)
        if selected.exists != self.folder.server_exists:
            # Usually already right (the round's LIST-STATUS stored it): then no transaction,
            # which saves a commit (an fsync) per folder and pass.
            async with self._write() as (conn, _):
                await folders.set_server_exists(
                    conn, account_id=self.account_id, exists={self.folder.id: selected.exists}
                )
                await accounts.refresh_progress(conn, account_id=self.account_id)  # type: ignore[arg-type]
        return sm.Opened(
            uidvalidity=selected.uidvalidity,
            uidnext=selected.uidnext or 1,
            exists=selected.exists,
            highestmodseq=selected.highestmodseq,
            local_count=local,
            condstore=self.session.condstore and selected.highestmodseq is not None,
            qresync=self.session.qresync,
            vanished=selected.vanished if used_qresync else None,
            changed=tuple(sm.FlagChange(c.uid, c.flags) for c in selected.changed),
        )

    async def _store_pipelined(self, stores: list[sm.Store]) -> int:
        """Fetch and parse batch k+1 while PostgreSQL commits batch k; commits stay in order."""
        total = 0
        committing: asyncio.Task[int] | None = None
        try:
            for uids, then in await self._plan(stores):
                batch = self._build(await self._fetch(uids))
                if committing is not None:
                    total += await committing
                committing = asyncio.create_task(self._commit(batch, then))
            if committing is not None:
                total += await committing
                committing = None
        except Exception:
            # A failed fetch (the connection dropped) does not undo the batch before it: that
            # batch is whole and its commit needs no IMAP connection, so it finishes, and a
            # link that keeps dropping still makes progress on every pass.
            if committing is not None and not committing.done():
                await committing
            raise
        finally:
            if committing is not None:
                committing.cancel()
                await asyncio.gather(committing, return_exceptions=True)
        return total

    async def _plan(
        self, stores: list[sm.Store]
    ) -> list[tuple[tuple[int, ...], sm.FolderSyncState | None]]:
        """The stores split by ``batch_bytes``: one size query for the whole pass, skipped
        when every store holds a single message (new mail, one at a time)."""
        if all(len(store.uids) <= 1 for store in stores):
            return [(store.uids, store.then) for store in stores]
        sizes = await self.session.fetch_sizes(sorted({u for s in stores for u in s.uids}))
        return [piece for store in stores for piece in pieces(store, sizes, self.batch_bytes)]

    async def _fetch(self, uids: tuple[int, ...]) -> list[FetchedMessage]:
        async with self.pool.acquire() as conn:
            already = await messages.present(conn, folder_id=self.folder.id, uids=uids)
        wanted = [u for u in uids if u not in already]
        fetched = await self.session.fetch_messages(wanted) if wanted else []
        crash_point("sync.fetched")
        return fetched

    @staticmethod
    def _build(fetched: list[FetchedMessage]) -> list[domain_messages.SyncedMessage]:
        return [
            domain_messages.build(
                uid=f.uid, raw=f.raw, flags=f.flags, internaldate=f.internaldate,
                modseq=f.modseq, emailid=f.emailid, gm_msgid=f.gm_msgid,
            )
            for f in fetched
        ]  # fmt: skip

    async def _store(self, uids: tuple[int, ...], then: sm.FolderSyncState) -> int:
        return await self._store_pipelined([sm.Store(uids, then)])

    async def _commit(
        self, batch: list[domain_messages.SyncedMessage], then: sm.FolderSyncState | None
    ) -> int:
        """Store ``batch`` and, in the same transaction, the checkpoint ``then`` (None: a
        piece of a larger batch, whose checkpoint comes with its last piece)."""
        async with self._write() as (conn, modseq):
            stored = 0
            if batch:
                stored = await messages.store_batch(
                    conn, account_id=self.account_id, folder_id=self.folder.id,
                    modseq=await modseq.get(), batch=batch,
                )  # fmt: skip
                await folders.recount(
                    conn, account_id=self.account_id, modseq=modseq.get,
                    folder_id=self.folder.id,
                )  # fmt: skip
                await accounts.add_synced(conn, account_id=self.account_id, count=stored)  # type: ignore[arg-type]
            if then is not None:
                await folders.save_state(
                    conn, account_id=self.account_id, folder_id=self.folder.id, state=then
                )
                synced_now = then.phase is sm.Phase.SYNCED
                if synced_now and self.folder.state.phase is not sm.Phase.SYNCED:
                    # history complete: the account's count of synced folders moved
                    await accounts.refresh_progress(conn, account_id=self.account_id)  # type: ignore[arg-type]
        crash_point("sync.stored")
        if self.on_progress is not None and stored:
            self.on_progress(stored)
        if then is not None and then.phase is sm.Phase.SYNCED:  # new mail: how fresh is it
            now = dt.datetime.now(dt.UTC)
            for message in batch:
                if message.internaldate is not None:
                    lag = (now - message.internaldate).total_seconds()
                    metrics.sync_lag_seconds.observe(max(0.0, lag))
        return stored

    async def _apply(self, flags: dict[int, frozenset[str]], vanished: frozenset[int]) -> None:
        if not flags and not vanished:
            return
        normalised = {uid: domain_messages.normalise_flags(f) for uid, f in flags.items()}
        async with self._write() as (conn, modseq):
            if normalised:
                await messages.set_flags(
                    conn, account_id=self.account_id, folder_id=self.folder.id,
                    modseq=await modseq.get(), flags_by_uid=normalised,
                )  # fmt: skip
            if vanished:
                await messages.expunge(
                    conn, account_id=self.account_id, folder_id=self.folder.id,
                    modseq=await modseq.get(), uids=vanished,
                )  # fmt: skip
            await folders.recount(
                conn, account_id=self.account_id, modseq=modseq.get,
                folder_id=self.folder.id,
            )  # fmt: skip
            if vanished:  # the account's message count (a pass may end without a Save)
                await accounts.refresh_progress(conn, account_id=self.account_id)  # type: ignore[arg-type]
        if normalised:
            crash_point("sync.flags_applied")
        if vanished:
            crash_point("sync.expunged")

    async def _diff(self, low: int, below: int) -> sm.Diffed:
        if below <= low:
            return sm.Diffed(frozenset(), frozenset())
        on_server = set(await self.session.search_uids(b"UID %d:%d" % (low, below - 1)))
        on_server = {u for u in on_server if low <= u < below}
        async with self.pool.acquire() as conn:
            here = await messages.live_uids(conn, folder_id=self.folder.id, low=low, below=below)
        return sm.Diffed(frozenset(here - on_server), frozenset(on_server - here))

    async def _remap(self) -> None:
        uids = await self.session.search_uids(b"ALL")
        server: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for i in range(0, len(uids), REMAP_CHUNK):
            chunk = uids[i : i + REMAP_CHUNK]
            for h in await self.session.fetch_headers(chunk, domain_messages.HEADER_FIELDS_ARG):
                sid = domain_messages.stable_id(
                    emailid=h.emailid, gm_msgid=h.gm_msgid, header=h.header, size=h.size
                )
                server.setdefault(sid, []).append((h.uid, domain_messages.normalise_flags(h.flags)))
        crash_point("sync.remap_fetched")
        async with self._write() as (conn, modseq):
            kept, dropped = await messages.remap(
                conn, account_id=self.account_id, folder_id=self.folder.id,
                modseq=await modseq.get(), server=server,
            )  # fmt: skip
        crash_point("sync.remapped")
        log.warning(
            "folder UIDVALIDITY changed: %d messages re-mapped by stable id, %d gone",
            kept, dropped, extra={"folder_id": self.folder.id},
        )  # fmt: skip
