"""Reading the change log: ``/v1/changes`` answers, and one LISTEN connection that follows it.

**Gap-free reads.** ``changes_since`` reads the account's modseq and floor and the change rows
in one REPEATABLE READ snapshot. Writers take their modseq under the account row lock and
commit in modseq order (see ``store.changes``), so the snapshot holds every change up to the
modseq it reports and none above it: a client that passes the returned state back as
``since`` can never skip a commit.

**Collapsing.** An object may change several times inside the window. What the client needs
is the net effect: was the object known before the window (its first change there is not
``created``) and does it exist after it (its last change is not ``destroyed``)? Known and
alive is ``updated`` (this includes a move, destroyed then updated under the same id); known
and gone is ``destroyed``; new and alive is ``created``; new and gone is left out.

**Following.** ``ChangeListener`` keeps one dedicated connection LISTENing on
``mailish_changes`` and hands each ``(account_id, modseq)`` to a callback; a process fans out
from it instead of opening a connection per client. Notifications sent while the connection
is down are lost, so after every (re)connect it calls ``on_listen``, whose job is to re-read
the current state of whatever it follows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from mailish.domain.errors import ConfigError, PermanentError, TransientError
from mailish.store import connecting
from mailish.store.changes import CHANNEL
from mailish.store.connecting import Conn

log = logging.getLogger(__name__)

CURRENT = "SELECT modseq, changes_floor FROM accounts WHERE id = $1"
WINDOW = """
SELECT object_kind, object_id,
    (array_agg(change ORDER BY modseq))[1] AS first,
    (array_agg(change ORDER BY modseq DESC))[1] AS last
FROM changes WHERE account_id = $1 AND modseq > $2 AND modseq <= $3
GROUP BY object_kind, object_id
ORDER BY object_kind, object_id
"""
STATES = "SELECT id, modseq FROM accounts WHERE id = ANY($1::uuid[])"
# New mail as a person means it: still there, unread, in the inbox. Sent copies, drafts,
# moves (which keep their id and log 'updated') and junk do not count.
NEW_MAIL = """
SELECT EXISTS (
    SELECT 1 FROM changes c
    JOIN messages m ON m.account_id = c.account_id AND m.id = c.object_id
    JOIN folders f ON f.account_id = m.account_id AND f.id = m.folder_id
    WHERE c.account_id = $1 AND c.modseq > $2 AND c.modseq <= $3
      AND c.object_kind = 'message' AND c.change = 'created'
      AND m.expunged_at IS NULL AND NOT m.seen AND f.role = 'inbox')
"""
SET_NAME = "SELECT set_config('application_name', $1, false)"
PING = "SELECT 1"


class CannotCalculateChanges(PermanentError):
    """``since`` is below the account's floor: those changes were trimmed."""

    def __init__(self, since: int, floor: int) -> None:
        super().__init__(f"state {since} is older than the oldest retained change ({floor})")
        self.since = since
        self.floor = floor


class FutureState(PermanentError):
    """``since`` is above the account's current state: it never came from this feed."""

    def __init__(self, since: int, current: int) -> None:
        super().__init__(f"state {since} is newer than the account's state {current}")
        self.since = since
        self.current = current


@dataclass(frozen=True, slots=True)
class ObjectChanges:
    created: tuple[int, ...] = ()
    updated: tuple[int, ...] = ()
    destroyed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ChangeSet:
    state: int
    messages: ObjectChanges
    folders: ObjectChanges


def collapse(first: str, last: str) -> str | None:
    """The net change of an object whose first and last changes in the window are given."""
    known_before = first != "created"
    alive_after = last != "destroyed"
    if known_before:
        return "updated" if alive_after else "destroyed"
    return "created" if alive_after else None


def _group(rows: Iterable[Any], kind: str) -> ObjectChanges:
    lists: dict[str, list[int]] = {"created": [], "updated": [], "destroyed": []}
    for row in rows:
        if row["object_kind"] == kind:
            net = collapse(row["first"], row["last"])
            if net is not None:
                lists[net].append(int(row["object_id"]))
    return ObjectChanges(
        tuple(lists["created"]), tuple(lists["updated"]), tuple(lists["destroyed"])
    )


async def changes_since(conn: Conn, *, account_id: UUID, since: int) -> ChangeSet | None:
    """The net changes after ``since``; None if the account does not exist.

    Opens its own REPEATABLE READ transaction, so call it outside one. Raises
    ``CannotCalculateChanges`` below the floor and ``FutureState`` above the current state.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        current = await conn.fetchrow(CURRENT, account_id)
        if current is None:
            return None
        state, floor = int(current["modseq"]), int(current["changes_floor"])
        if since < floor:
            raise CannotCalculateChanges(since, floor)
        if since > state:
            raise FutureState(since, state)
        rows = await conn.fetch(WINDOW, account_id, since, state) if since < state else []
    return ChangeSet(state, _group(rows, "message"), _group(rows, "folder"))


async def current_states(conn: Conn, *, account_ids: Iterable[UUID]) -> dict[UUID, int]:
    rows = await conn.fetch(STATES, list(account_ids))
    return {row["id"]: int(row["modseq"]) for row in rows}


async def new_mail_between(conn: Conn, *, account_id: UUID, after: int, upto: int) -> bool:
    """Did a commit with modseq in ``(after, upto]`` bring new unread inbox mail?"""
    return bool(await conn.fetchval(NEW_MAIL, account_id, after, upto))


def parse_payload(payload: str) -> tuple[UUID, int] | None:
    """``'<account_id>:<modseq>'`` as sent by ``changes.next_modseq``; None if malformed."""
    account, _, modseq = payload.partition(":")
    try:
        return UUID(account), int(modseq)
    except ValueError:
        return None


class ChangeListener:
    """One LISTEN connection, kept open: reconnects with capped, jittered backoff.

    ``on_change`` runs synchronously for every notification (keep it cheap: no awaiting);
    ``on_listen`` is awaited after every successful LISTEN, first connect included. A silent
    network drop is caught by a ping every ``health_interval`` seconds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        on_change: Callable[[UUID, int], None],
        on_listen: Callable[[], Awaitable[None]],
        application_name: str,
        connect_timeout: float = 10.0,
        health_interval: float = 15.0,
        max_backoff: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._on_change = on_change
        self._on_listen = on_listen
        self._name = application_name
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._max_backoff = max_backoff
        self.listening = asyncio.Event()
        self.connects = 0  # successful LISTENs so far; one per (re)connect

    async def run(self) -> None:
        """Listen until cancelled; every failure is logged and followed by a reconnect."""
        attempt = 0
        while True:
            connects = self.connects
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener's task root: log, back off, reconnect
                level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
                log.log(level, "change listener lost (%s: %s)", type(exc).__name__, exc)
            if self.connects > connects:
                attempt = 0  # it was listening: a drop starts a fresh, short backoff
            delay = min(self._max_backoff, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        try:
            conn = await connecting.connect(self._dsn, connect_timeout=self._connect_timeout)
        except ConfigError as exc:  # a password rotation may fix it; keep trying, loudly
            raise TransientError(str(exc)) from exc
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.fetchval(SET_NAME, self._name)
            await conn.add_listener(CHANNEL, self._notified)
            self.connects += 1
            self.listening.set()
            log.info("listening on %s (connect #%d)", CHANNEL, self.connects)
            try:
                await self._on_listen()
            except Exception:  # missed events stay missed until the next one; keep listening
                log.exception("re-reading states after LISTEN failed")
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), self._health_interval)
                except TimeoutError:
                    await conn.fetchval(PING, timeout=self._connect_timeout)
            raise TransientError("LISTEN connection closed by the server")
        finally:
            self.listening.clear()
            if not conn.is_closed():
                await conn.close(timeout=2.0)  # terminates by itself if the server is gone

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        parsed = parse_payload(str(payload))
        if parsed is None:
            log.warning("ignoring malformed %s payload %r", CHANNEL, payload)
            return
        self._on_change(*parsed)
