"""One account's sync loop: mirror the folder list, run folder passes, then wait for changes.

Order: INBOX first, then folders with a role, then the rest, so that new mail is visible
before history is complete. After the first full round the loop waits for the server to
tell it something changed: NOTIFY (one connection covers every folder) when offered, else
IDLE on INBOX with a periodic poll of the other folders. Every wait is bounded, IDLE is
re-issued before the 29-minute mark, and a full round runs at least every ``full_every``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal
from uuid import UUID

from mailish.domain import folders as domain_folders
from mailish.domain import syncing
from mailish.domain.buckets import BucketLease
from mailish.domain.errors import AuthError, Fenced
from mailish.domain.folders import FolderRole, ListedFolder, ObservedFolder
from mailish.domain.logins import Login
from mailish.domain.syncing import FolderSyncState, Phase
from mailish.mail.imap import wire
from mailish.mail.imap.connection import ImapConnection, ImapError, ImapSettings
from mailish.mail.imap.session import ImapSession, ListedMailbox
from mailish.mail.smtp import SmtpSettings
from mailish.observability.crashpoints import crash_point
from mailish.observability.logs import bind
from mailish.store import accounts, changes, claims, folders, messages
from mailish.store.connecting import Pool
from mailish.store.folders import FolderSpec, StoredFolder
from mailish.worker.folder_sync import FolderSync
from mailish.worker.operating import Executor
from mailish.worker.sending import Sender

log = logging.getLogger(__name__)
ROLE_ORDER = [FolderRole.INBOX, FolderRole.SENT, FolderRole.DRAFTS, FolderRole.ARCHIVE,
              FolderRole.JUNK, FolderRole.TRASH, FolderRole.ALL, FolderRole.FLAGGED,
              FolderRole.IMPORTANT]  # fmt: skip
NOTIFY_EVENTS = (
    b"SET (selected (MessageNew MessageExpunge FlagChange)) "
    b"(personal (MessageNew MessageExpunge FlagChange MailboxName))"
)


@dataclass(frozen=True, slots=True)
class SyncTuning:
    batch: int = 100
    poll_interval: float = 60.0  # other folders without NOTIFY (IDLE watches INBOX only)
    #: The safety-net poll when the server pushes changes for every folder (NOTIFY); None:
    #: ``poll_interval``. Each poll costs a LIST-STATUS and a few statements per account.
    notify_poll_interval: float | None = None
    full_every: float = 600.0
    idle_limit: float = 25 * 60.0  # re-issue IDLE well before RFC 2177's 29 minutes
    debounce: float = 0.05
    use_notify: bool = True
    tombstone_ttl: dt.timedelta = dt.timedelta(minutes=10)
    #: A folder whose UIDVALIDITY breaker tripped is tried again after this long.
    flag_cooldown: dt.timedelta = dt.timedelta(hours=6)
    changes_retention: dt.timedelta = dt.timedelta(days=30)


@dataclass
class AccountSync:
    pool: Pool
    lease: BucketLease
    account_id: UUID
    imap: ImapSettings
    login: Login
    tuning: SyncTuning = field(default_factory=SyncTuning)
    smtp: SmtpSettings | None = None
    #: A current login on demand (OAuth2 access tokens expire while a session lives on);
    #: the sender asks it before each SMTP login. None: ``login`` never goes stale.
    relogin: Callable[[], Awaitable[Login]] | None = None
    rounds: int = 0
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    _index_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set (by the worker's LISTEN on ``mailish_ops``) when the API queued an operation.
    ops_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    #: The last wait ended at the poll deadline with nothing reported by the server.
    _quiet_poll: bool = False
    #: LIST-STATUS of the last mirrored folder list, by path.
    _listed_status: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Paths of the folders that mirror settled from LIST-STATUS (new and empty): no pass.
    _settled: set[str] = field(default_factory=set)
    #: Loop time of the last housekeeping (None: no round finished yet).
    _housekept_at: float | None = None

    async def run(self) -> None:
        """Connect and sync until cancelled; errors propagate to the supervisor."""
        with bind(account_id=str(self.account_id), bucket=self.lease.bucket):
            conn = await ImapConnection.open(self.imap)
            try:
                await conn.login(self.login)
                session = ImapSession(conn)
                await session.enable_extensions()
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._index_forever(), name="indexer")
                        group.create_task(self._loop(session), name="sync")
                except BaseExceptionGroup as failed:
                    raise _most_telling(failed) from None
            finally:
                await conn.logout()

    async def _index_forever(self) -> None:
        """Build full-text vectors for stored messages, off the sync's critical path."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._index_wanted.wait(), self.tuning.full_every)
            self._index_wanted.clear()
            await self.index_pending()

    async def index_pending(self) -> int:
        total = 0
        while True:
            async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
                done = await messages.index_pending(conn, account_id=self.account_id)
            total += done
            if done == 0:
                return total

    async def _loop(self, session: ImapSession) -> None:
        loop = asyncio.get_running_loop()
        notify = await self._start_notify(session)
        dirty: set[str] | None = None  # None: everything, including the folder list
        last_full = 0.0
        while True:
            due = loop.time() - last_full >= self.tuning.full_every
            quiet = self._quiet_poll and not due
            if dirty is None and quiet and await self._nothing_changed(session):
                pass  # the poll's one LIST-STATUS and one query showed nothing to do
            elif dirty is None or due:
                # A poll that heard nothing only checks: folders whose LIST-STATUS shows no
                # change since their last pass are skipped. The first round (a new session
                # trusts no earlier one: skipping there let mail delivered during a lease
                # drop and re-take go unseen in test_failover under load, cause not yet
                # found), rounds after server events, and one every ``full_every`` open
                # every folder.
                await self.sync_all(session, skip_unchanged=quiet)
                if not quiet:
                    last_full = loop.time()
            elif dirty:
                await self._sync_paths(session, dirty)
            # After a sync, so folder roles (Sent, Trash) are known; what the operations and
            # sends changed on the server is synced right away.
            touched = await self.apply_operations(session)
            if touched:
                await self._sync_paths(session, touched)
            self.rounds += 1
            self.synced.set()
            await self._set_state("idle", None)
            self._quiet_poll = False
            dirty = await (self._wait_notify(session) if notify else self._wait_idle(session))

    # -- rounds --------------------------------------------------------------------------

    async def apply_operations(self, session: ImapSession) -> set[str]:
        """Apply queued user operations and send due mail; returns folders (raw names) to
        re-sync after them."""
        self.ops_wanted.clear()
        executor = Executor(session, self.pool, self.lease, self.account_id)
        await executor.apply_due()
        sender = Sender(
            session, self.pool, self.lease, self.account_id, self.smtp, self.relogin or self.login
        )
        await sender.send_due()
        return executor.touched | sender.touched

    async def sync_all(self, session: ImapSession, *, skip_unchanged: bool = False) -> None:
        """Mirror the folder list, then run a pass on every folder; with ``skip_unchanged``,
        only on folders the LIST-STATUS just received shows changed (see ``_unchanged``)."""
        await self._set_state("syncing", None)
        self._listed_status, self._settled = {}, set()
        stored = await self._mirror_folder_list(session)
        for folder in _in_sync_order(stored):
            if folder.path in self._settled:
                continue  # empty and new: the mirror saved its state from LIST-STATUS
            if skip_unchanged and _unchanged(folder, self._listed_status.get(folder.path)):
                continue
            await self._sync_folder(session, folder)
        await self._housekeeping()

    async def _housekeeping(self) -> None:
        """Purge old tombstones, trim the change log and retry flagged folders past their
        cool-down, once per ``tombstone_ttl`` counted from the first round (a transaction
        and ten statements: on every round, ~15% of a small account's first sync and the
        same again on each poll). A retried folder gets its pass in the next round."""
        now = asyncio.get_running_loop().time()
        if self._housekept_at is None:
            self._housekept_at = now
        if now - self._housekept_at < self.tuning.tombstone_ttl.total_seconds():
            return
        self._housekept_at = now
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await messages.purge_tombstones(
                conn, account_id=self.account_id, older_than=self.tuning.tombstone_ttl
            )
            await changes.trim(
                conn, account_id=self.account_id, older_than=self.tuning.changes_retention
            )
            retried = await folders.retry_flagged(
                conn, account_id=self.account_id, older_than=self.tuning.flag_cooldown,
                modseq=changes.LazyModseq(conn, self.account_id).get,
            )  # fmt: skip
        if retried:
            log.warning("retrying %d flagged folder(s) after their cool-down", retried)

    async def _nothing_changed(self, session: ImapSession) -> bool:
        """For a poll that heard nothing: true when LIST-STATUS shows the same folders as
        stored, each ``_unchanged`` (or not selectable, or flagged: its retry comes with a
        full round's housekeeping), and no folder operation is queued.
        Then the round is skipped: no mirror transaction, just one LIST-STATUS and one query.
        When this was added (a round then cost ~130 statements and 14 commits), 2,000 idle
        accounts polling every 60 s kept 21% of a core busy with ``skip_unchanged`` alone
        and 9% with this check (bench/scale.py)."""
        status = _statuses(await session.list_mailboxes())
        async with self.pool.acquire() as conn:
            stored = await folders.list_folders(conn, account_id=self.account_id)
        if set(status) != {f.path for f in stored}:
            return False
        return all(
            f.pending_op is None
            and not f.deleting
            and (not f.selectable or f.state.flagged_reason or _unchanged(f, status[f.path]))
            for f in stored
        )

    async def _sync_paths(self, session: ImapSession, paths: set[str]) -> None:
        async with self.pool.acquire() as conn:
            stored = await folders.list_folders(conn, account_id=self.account_id)
        for folder in _in_sync_order([f for f in stored if f.raw_name in paths]):
            await self._sync_folder(session, folder)

    async def _sync_folder(self, session: ImapSession, folder: StoredFolder) -> None:
        if not folder.selectable or folder.state.flagged_reason or folder.pending_op is not None:
            return  # a queued create/rename may not exist on the server under this name yet
        with bind(folder=folder.path):
            try:
                await FolderSync(
                    session=session, pool=self.pool, lease=self.lease,
                    account_id=self.account_id, folder=folder, batch=self.tuning.batch,
                    on_progress=lambda _: self._index_wanted.set(),
                ).run_pass()  # fmt: skip
            except ImapError as exc:
                # Deleted or renamed under us: the next round's LIST sorts it out.
                log.warning("folder pass failed: %s", exc)

    async def _mirror_folder_list(self, session: ImapSession) -> list[StoredFolder]:
        async with self.pool.acquire() as conn:
            stored = await folders.list_folders(conn, account_id=self.account_id)
        if any(f.pending_op is not None for f in stored):
            # A queued create/rename/delete is in flight; mirror on the next round.
            return [f for f in stored if not f.deleting]
        listed = await session.list_mailboxes()
        crash_point("sync.listed")
        old_paths = {f.path for f in stored}
        # A known path keeps its row even if its UIDVALIDITY changed: the folder's state
        # machine remaps that by stable id. UIDVALIDITY only matters for spotting renames.
        observed = [_observed(m, known=old_paths) for m in listed]
        by_path = {o.folder.path: o for o in observed}
        if old_paths - set(by_path) and set(by_path) - old_paths:
            await self._fill_uidvalidity(session, observed, old_paths)
        roles = domain_folders.assign_roles([o.folder for o in observed])
        snapshots = {
            f.path: domain_folders.FolderSnapshot(f.path, f.state.uidvalidity, f.role)
            for f in stored
        }
        diff = domain_folders.diff_folders(snapshots, observed)
        specs = {o.folder.path: _spec(o.folder, roles.get(o.folder.path)) for o in observed}
        ids = {f.path: f.id for f in stored}
        statuses = _statuses(listed)
        self._listed_status = statuses
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            modseq = changes.LazyModseq(conn, self.account_id).get  # only if something changed
            await folders.delete(
                conn, account_id=self.account_id, modseq=modseq,
                folder_ids=[ids[p] for p in diff.deleted if p in ids],
            )  # fmt: skip
            for old, new in diff.renamed:
                await folders.rename(
                    conn, account_id=self.account_id, modseq=modseq, folder_id=ids[old],
                    spec=specs[new],
                )  # fmt: skip
                ids[new] = ids.pop(old)
            await folders.update_meta(
                conn, account_id=self.account_id, modseq=modseq,
                specs=[spec for path, spec in specs.items() if path in ids],
            )  # fmt: skip
            created = await folders.create(
                conn, account_id=self.account_id, modseq=modseq,
                specs=[specs[path] for path in diff.created],
            )  # fmt: skip
            ids.update(created)
            await folders.link_parents(conn, account_id=self.account_id, specs=list(specs.values()))
            # LIST-STATUS gives totals before any folder is opened, and settles empty new
            # folders without a pass (a SELECT, a query and a commit each saved).
            exists = {ids[p]: st["MESSAGES"] for p, st in statuses.items()
                      if "MESSAGES" in st and p in ids}  # fmt: skip
            await folders.set_server_exists(conn, account_id=self.account_id, exists=exists)
            unsynced = {f.path: f.state for f in stored if f.state.phase is Phase.NEW}
            unsynced.update((path, FolderSyncState()) for path in created)
            settled = _settled_by_status(unsynced, specs, statuses, condstore=session.condstore)
            await folders.save_states(
                conn, account_id=self.account_id,
                states={ids[p]: state for p, state in settled.items() if p in ids},
            )  # fmt: skip
            self._settled = set(settled)
            await accounts.refresh_progress(conn, account_id=self.account_id)  # type: ignore[arg-type]
            result = await folders.list_folders(conn, account_id=self.account_id)
        crash_point("sync.mirrored")
        if diff.created or diff.deleted or diff.renamed:
            log.info(
                "folders: %d created, %d deleted, %d renamed",
                len(diff.created), len(diff.deleted), len(diff.renamed),
            )  # fmt: skip
        return result

    async def _fill_uidvalidity(
        self, session: ImapSession, observed: list[ObservedFolder], old_paths: set[str]
    ) -> None:
        """Rename detection needs UIDVALIDITY of new paths; ask STATUS when LIST didn't say."""
        for i, item in enumerate(observed):
            if item.uidvalidity is None and item.folder.path not in old_paths:
                if not item.folder.selectable:
                    continue
                result = await session.conn.command(
                    "STATUS", wire.quote(item.folder.raw_name), b"(UIDVALIDITY)"
                )
                for data in result.of("STATUS"):
                    values = data.values[1] if len(data.values) > 1 else []
                    if isinstance(values, list):
                        pairs = wire.flatten_pairs(values)
                        value = pairs.get("UIDVALIDITY")
                        if isinstance(value, str) and value.isdigit():
                            observed[i] = ObservedFolder(item.folder, int(value))

    # -- waiting -------------------------------------------------------------------------

    async def _start_notify(self, session: ImapSession) -> bool:
        if not self.tuning.use_notify or not session.conn.has("NOTIFY"):
            return False
        try:
            await session.conn.command("NOTIFY", NOTIFY_EVENTS)
        except ImapError as exc:
            log.info("NOTIFY refused (%s); falling back to IDLE", exc)
            return False
        return True

    async def _wait_notify(self, session: ImapSession) -> set[str] | None:
        """Block until the server reports a change; returns the folders to sync (None: all).

        No mailbox stays selected while waiting: Dovecot reports changes to the selected
        mailbox only at command boundaries, but changes to the others at once (as STATUS).
        """
        # Changes reported while folders were selected during the round cannot be tied to a
        # folder any more (the selection moved on); they buy a full round, which is cheap
        # with CONDSTORE/QRESYNC.
        if any(_is_mailbox_event(e) for e in session.conn.unsolicited):
            session.conn.unsolicited.clear()
            return None
        await session.unselect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.tuning.notify_poll_interval or self.tuning.poll_interval)
        dirty: set[str] = set()
        relist = False
        pending = list(session.conn.unsolicited)
        session.conn.unsolicited.clear()
        events = 0
        while True:
            for event in pending:
                relist |= _classify(event, session.selected, dirty)
            events += len(pending)
            pending = []
            if events > MAX_EVENTS_PER_WAKE:  # a server that never pauses: resync it all
                self._quiet_poll = False
                return None
            if dirty or relist:
                wait = self.tuning.debounce
            else:
                wait = deadline - loop.time()
                if wait <= 0:
                    self._quiet_poll = True
                    return None
            arrived = await self._event_or_ops(session, wait)
            if arrived == _OPS:
                return dirty if not relist else None
            if arrived is None:
                self._quiet_poll = not relist and not dirty
                return None if relist or not dirty else dirty
            assert not isinstance(arrived, str)
            pending.append(arrived)

    async def _wait_idle(self, session: ImapSession) -> set[str] | None:
        """IDLE on INBOX until something happens there or the poll interval passes."""
        inbox = "INBOX"
        # Changes reported during the round (set aside as unsolicited) or between the round
        # and this IDLE would otherwise wait for the next poll: look before idling.
        if any(_is_mailbox_event(e) for e in session.conn.unsolicited):
            session.conn.unsolicited.clear()
            return None
        if session.selected != inbox:
            selected = await session.select(inbox, readonly=True)
            async with self.pool.acquire() as conn:
                known = {f.raw_name: f.state.uidnext for f in await folders.list_folders(
                    conn, account_id=self.account_id)}  # fmt: skip
            if known.get(inbox) is not None and selected.uidnext != known[inbox]:
                return {inbox}
        loop = asyncio.get_running_loop()
        limit = min(self.tuning.poll_interval, self.tuning.idle_limit)
        deadline = loop.time() + limit
        tag = await session.conn.idle_begin()
        changed = woken = False
        try:
            while not changed:
                wait = deadline - loop.time()
                if wait <= 0:
                    break
                event = await self._event_or_ops(session, wait)
                if event is None or event == _OPS:
                    woken = event == _OPS
                    break
                changed = isinstance(event, wire.DataResponse) and event.kind in _MAILBOX_EVENTS
        finally:
            if not session.conn.closed:
                await session.conn.idle_end(tag)
        if changed:
            return {inbox}
        self._quiet_poll = not woken
        return set() if woken else None  # woken by an operation: apply it, no full round

    async def _event_or_ops(
        self, session: ImapSession, wait: float
    ) -> wire.Response | Literal["ops"] | None:
        """The next server event, None after ``wait`` seconds, or _OPS when the API queued an
        operation. A read is only abandoned while no response has started arriving."""
        if self.ops_wanted.is_set():
            return _OPS
        reading = asyncio.create_task(session.conn.wait_event(wait))
        woken = asyncio.create_task(self.ops_wanted.wait())
        try:
            await asyncio.wait({reading, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not reading.done() and not session.conn.mid_event:
                reading.cancel()
            await asyncio.gather(woken, reading, return_exceptions=True)
        if reading.cancelled():
            return _OPS
        return reading.result()

    async def _set_state(self, state: str, error: str | None) -> None:
        async with self.pool.acquire() as conn:
            await accounts.set_sync_state(
                conn,
                account_id=self.account_id,  # type: ignore[arg-type]
                state=state,
                last_error=error,
            )


# OVERFLOW: the connection dropped unsolicited responses beyond its bound (a full round).
_MAILBOX_EVENTS = frozenset({"EXISTS", "EXPUNGE", "FETCH", "VANISHED", "OVERFLOW"})
#: Events gathered into one wake-up while they keep arriving within ``debounce`` of each
#: other; beyond, the loop stops listening and runs a full round.
MAX_EVENTS_PER_WAKE = 1000
_OPS: Final = "ops"


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception the account runner must act on: losing the bucket beats a refused
    login beats anything else (a TaskGroup would hide them inside a group)."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            flat.append(item)
    for kind in (Fenced, AuthError):
        for item in flat:
            if isinstance(item, kind):
                return item
    return flat[0]


def _is_mailbox_event(event: wire.Response) -> bool:
    return isinstance(event, wire.DataResponse) and event.kind in _MAILBOX_EVENTS


def _classify(event: wire.Response, selected: str | None, dirty: set[str]) -> bool:
    """Record which folder an unsolicited response is about; True means re-LIST."""
    if isinstance(event, wire.DataResponse):
        if event.kind == "STATUS" and event.values:
            name = event.values[0]
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(name, str):
                dirty.add(name)
        elif event.kind in _MAILBOX_EVENTS and selected is not None:
            dirty.add(selected)
        elif event.kind == "LIST":
            return True
    return False


def _unchanged(folder: StoredFolder, status: dict[str, int] | None) -> bool:
    """Nothing can have changed in ``folder`` since its last completed pass: it is fully
    synced and the server's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (CONDSTORE: any new mail,
    flag change or expunge raises it) are what that pass saw. Without HIGHESTMODSEQ in
    LIST-STATUS nothing is skipped. Saves a SELECT and ~15 statements per folder on each
    idle poll (most of the worker's idle CPU in bench/scale.py came from these)."""
    state = folder.state
    return (
        status is not None
        and state.phase is Phase.SYNCED
        and state.flagged_reason is None
        and state.highestmodseq is not None
        and status.get("HIGHESTMODSEQ") == state.highestmodseq
        and status.get("UIDVALIDITY") == state.uidvalidity
        and status.get("UIDNEXT") == state.uidnext
    )


def _observed(mailbox: ListedMailbox, *, known: set[str]) -> ObservedFolder:
    folder = ListedFolder.from_wire(mailbox.raw_name, mailbox.delimiter, mailbox.attributes)
    uidvalidity = None if folder.path in known else mailbox.status.get("UIDVALIDITY")
    return ObservedFolder(folder, uidvalidity)


def _statuses(listed: list[ListedMailbox]) -> dict[str, dict[str, int]]:
    """LIST-STATUS by folder path (the decoded name the store keys folders by)."""
    return {_observed(m, known=set()).folder.path: m.status for m in listed}


def _settled_by_status(
    unsynced: dict[str, FolderSyncState],
    specs: dict[str, FolderSpec],
    statuses: dict[str, dict[str, int]],
    *,
    condstore: bool,
) -> dict[str, FolderSyncState]:
    """The synced state, by path, of each never-synced selectable folder that LIST-STATUS
    shows empty (``syncing.settled_by_status``)."""
    settled: dict[str, FolderSyncState] = {}
    for path, state in unsynced.items():
        spec, status = specs.get(path), statuses.get(path)
        if spec is None or not spec.selectable or status is None:
            continue
        done = syncing.settled_by_status(state, status, condstore=condstore)
        if done is not None:
            settled[path] = done
    return settled


def _spec(folder: ListedFolder, role: FolderRole | None) -> FolderSpec:
    return FolderSpec(
        path=folder.path,
        raw_name=folder.raw_name,
        name=folder.name,
        delimiter=folder.delimiter,
        role=role,
        attributes=tuple(sorted(folder.attributes)),
        selectable=folder.selectable,
        parent_path=folder.parent_path,
    )


def _in_sync_order(stored: list[StoredFolder]) -> list[StoredFolder]:
    stored = [f for f in stored if not f.deleting]

    def key(folder: StoredFolder) -> tuple[int, str]:
        rank = ROLE_ORDER.index(folder.role) if folder.role in ROLE_ORDER else len(ROLE_ORDER)
        return rank, folder.path

    return sorted(stored, key=key)
