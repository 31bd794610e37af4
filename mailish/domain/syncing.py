"""The per-folder sync state machine: pure decisions, no I/O.

``step(machine, observation) -> (machine, commands)``. A thin async driver
(``mailish.worker.folder_sync``) runs each command over IMAP/PostgreSQL and feeds back what
it saw. Persistent state is ``FolderSyncState``; a pass also carries transient ``Pass`` data
(what SELECT reported, UIDs still to fetch). One pass::

    OPEN ──Opened──► (flagged?) ─────────────────────────────────────────────► DONE
              │ UIDVALIDITY changed: resets+1 ─► breaker tripped ─► Save(FLAGGED) ► DONE
              │                        └──► REMAP ─Remapped─► history from the top
              │ new folder: INITIAL, low_uid = uidnext ─► HISTORY (empty ─► FINISH)
              ▼
           NEW_MAIL  Search(uidnext..*) ─Found─► Store(batch ↑, then uidnext=max+1) ...
              ▼
           CHANGES   QRESYNC data from SELECT ─► Apply(changed, vanished)
                     CONDSTORE ─► SyncFlags(CHANGEDSINCE)   (none ─► SyncFlags(all))
              ▼
           DIFF      when expunges can't be known otherwise: Diff(range) ─Diffed─►
                     Expunge(gone) + Store(missing)
              ▼
           HISTORY   INITIAL only: Search(1..low_uid-1) ─Found─► Store(newest batch,
                     then low_uid=min(batch)) ...; the last batch's ``then`` is already
                     the final SYNCED state (no Save follows) ─► DONE
              ▼
           FINISH    Save(uidnext, highestmodseq as of SELECT) ─► DONE
                     (no Save when that is the state the pass started from)

Driver contract: run the commands of one step in order, then answer with the observation of
the last one: ``Opened`` for Open, ``Found`` for Search, ``Stored`` for Store (the total of a
run of Stores), ``Diffed`` for Diff and ``Done`` for everything else. Only the last command of
a step returns data.

Invariants the checkpoints keep (each ``Store`` commits its messages and its ``then`` state in
one transaction, so a crash anywhere resumes without loss or duplicates):

- every UID in ``[low_uid, uidnext)`` that the server had is stored locally (or was expunged);
- flags of stored messages are current as of ``highestmodseq`` (CONDSTORE);
- ``resets`` counts consecutive passes that found a new UIDVALIDITY; past ``MAX_RESETS``
  the folder is FLAGGED and left alone instead of being re-downloaded in a loop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

MAX_RESETS = 3
DEFAULT_BATCH = 100


class Phase(enum.Enum):
    NEW = "new"
    INITIAL = "initial"
    SYNCED = "synced"
    FLAGGED = "flagged"


class Stage(enum.Enum):
    OPEN = "open"
    REMAP = "remap"
    NEW_MAIL = "new_mail"
    CHANGES = "changes"
    DIFF = "diff"
    HISTORY = "history"
    FINISH = "finish"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class FolderSyncState:
    phase: Phase = Phase.NEW
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    low_uid: int | None = None
    resets: int = 0
    flagged_reason: str | None = None


# -- observations (what the driver saw) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagChange:
    uid: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Opened:
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None
    #: Messages stored locally at SELECT; only compared (so only counted) for SYNCED
    #: folders opened without QRESYNC.
    local_count: int
    condstore: bool
    qresync: bool
    #: QRESYNC: what SELECT reported since our modseq (None when QRESYNC was not used).
    vanished: frozenset[int] | None = None
    changed: tuple[FlagChange, ...] = ()


@dataclass(frozen=True, slots=True)
class Found:
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stored:
    count: int


@dataclass(frozen=True, slots=True)
class Diffed:
    gone: frozenset[int]  # local, no longer on the server
    missing: frozenset[int]  # on the server, not local


@dataclass(frozen=True, slots=True)
class Done:
    """Acknowledges commands that need no data back (Save, Apply, SyncFlags, Remap)."""


Observation = Opened | Found | Stored | Diffed | Done

# -- commands (what the driver must do) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    #: (uidvalidity, highestmodseq) for QRESYNC when both are known.
    known: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Search:
    low: int
    high: int | None  # None: up to "*"


@dataclass(frozen=True, slots=True)
class Store:
    """Fetch these UIDs (skip ones already stored), store them and ``then`` in one commit."""

    uids: tuple[int, ...]
    then: FolderSyncState


@dataclass(frozen=True, slots=True)
class Apply:
    """QRESYNC results: set flags, forget vanished UIDs."""

    changed: tuple[FlagChange, ...]
    vanished: frozenset[int]


@dataclass(frozen=True, slots=True)
class SyncFlags:
    """Fetch flags for UIDs below ``below``; CHANGEDSINCE when ``since`` is set."""

    below: int
    since: int | None


@dataclass(frozen=True, slots=True)
class Diff:
    low: int
    below: int


@dataclass(frozen=True, slots=True)
class Expunge:
    uids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Remap:
    """UIDVALIDITY changed: re-point local messages to new UIDs by stable id, taking the
    server's current flags (fetched with the ids), and drop local messages with no match."""

    uidvalidity: int


@dataclass(frozen=True, slots=True)
class Save:
    state: FolderSyncState


Command = Open | Search | Store | Apply | SyncFlags | Diff | Expunge | Remap | Save


@dataclass(frozen=True, slots=True)
class Pass:
    stage: Stage = Stage.OPEN
    opened: Opened | None = None
    pending: tuple[int, ...] = ()  # UIDs found and not yet stored, in the order to store them
    stored_new: int = 0
    used_qresync: bool = False
    #: The persisted state the pass started from: a pass that ends there saves nothing.
    initial: FolderSyncState | None = None


@dataclass(frozen=True, slots=True)
class Machine:
    state: FolderSyncState
    run: Pass = field(default_factory=Pass)
    batch: int = DEFAULT_BATCH

    @property
    def done(self) -> bool:
        return self.run.stage is Stage.DONE


def start(state: FolderSyncState, *, batch: int = DEFAULT_BATCH) -> tuple[Machine, list[Command]]:
    """Begin a pass: the first command is always Open (QRESYNC parameters when known)."""
    known = None
    if state.uidvalidity is not None and state.highestmodseq is not None:
        known = (state.uidvalidity, state.highestmodseq)
    return Machine(state, Pass(initial=state), batch), [Open(known)]


def step(m: Machine, obs: Observation) -> tuple[Machine, list[Command]]:
    """The one place transitions live. Raises ValueError on an observation out of order."""
    stage = m.run.stage
    if stage is Stage.OPEN and isinstance(obs, Opened):
        return _opened(m, obs)
    if stage is Stage.REMAP and isinstance(obs, Done):
        return _history(m)
    if stage is Stage.NEW_MAIL and isinstance(obs, Found):
        floor = m.state.uidnext or 1
        fresh = tuple(sorted(uid for uid in obs.uids if uid >= floor))
        return _store_new(_with(m, pending=fresh))
    if stage is Stage.NEW_MAIL and isinstance(obs, Stored):
        run = replace(m.run, stored_new=m.run.stored_new + obs.count)
        return _store_new(replace(m, run=run))
    if stage is Stage.CHANGES and isinstance(obs, Done):
        return _diff(m)
    if stage is Stage.DIFF and isinstance(obs, Diffed):
        commands: list[Command] = []
        if obs.gone:
            commands.append(Expunge(obs.gone))
        missing = tuple(sorted(obs.missing))
        for i in range(0, len(missing), m.batch):
            commands.append(Store(missing[i : i + m.batch], m.state))
        if commands:
            return _with(m, stage=Stage.HISTORY, pending=()), [*commands, Save(m.state)]
        return _history(m)
    if stage is Stage.HISTORY and isinstance(obs, Done):
        return _history(m)
    if stage is Stage.HISTORY and isinstance(obs, Found):
        newest_first = tuple(sorted((u for u in obs.uids if u < _low(m.state)), reverse=True))
        return _store_history(_with(m, pending=newest_first))
    if stage is Stage.HISTORY and isinstance(obs, Stored):
        return _store_history(m)
    if stage is Stage.FINISH and isinstance(obs, Done | Stored):
        return _with(m, stage=Stage.DONE), []
    raise ValueError(f"unexpected {type(obs).__name__} in stage {stage.value}")


# -- transitions ---------------------------------------------------------------------------


def _with(m: Machine, **changes: object) -> Machine:
    return replace(m, run=replace(m.run, **changes))  # type: ignore[arg-type]


def _low(state: FolderSyncState) -> int:
    return state.low_uid if state.low_uid is not None else (state.uidnext or 1)


def _opened(m: Machine, obs: Opened) -> tuple[Machine, list[Command]]:
    state = m.state
    m = _with(m, opened=obs)
    if state.phase is Phase.FLAGGED:
        return _with(m, stage=Stage.DONE), []
    if state.uidvalidity is not None and state.uidvalidity != obs.uidvalidity:
        resets = state.resets + 1
        if resets > MAX_RESETS:
            flagged = replace(
                state,
                phase=Phase.FLAGGED,
                resets=resets,
                flagged_reason=f"UIDVALIDITY changed {resets} times in a row",
            )
            return replace(m, state=flagged, run=replace(m.run, stage=Stage.FINISH)), [
                Save(flagged)
            ]
        fresh = _fresh(obs, resets=resets)
        return replace(m, state=fresh, run=replace(m.run, stage=Stage.REMAP)), [
            Remap(obs.uidvalidity)
        ]
    if state.uidvalidity is None:
        # No checkpoint of its own: a crash before the first history Store commits leaves
        # nothing behind, and that Store saves this state with its batch.
        fresh = _fresh(obs, resets=0)
        if obs.exists == 0:  # nothing below UIDNEXT: synced as soon as saved
            return _finish(replace(m, state=replace(fresh, phase=Phase.SYNCED, low_uid=1)))
        return _history(replace(m, state=fresh))
    if state.resets:
        m = replace(m, state=replace(state, resets=0))
    if state.uidnext is not None and obs.uidnext <= state.uidnext:
        return _changes(m)
    return _with(m, stage=Stage.NEW_MAIL), [Search(state.uidnext or 1, None)]


def _fresh(obs: Opened, *, resets: int) -> FolderSyncState:
    return FolderSyncState(
        phase=Phase.INITIAL,
        uidvalidity=obs.uidvalidity,
        uidnext=obs.uidnext,
        highestmodseq=obs.highestmodseq,
        low_uid=obs.uidnext,
        resets=resets,
    )


def _batches(
    m: Machine, uids: tuple[int, ...], checkpoint: str
) -> tuple[FolderSyncState, list[Command]]:
    """All batches at once, each with its own checkpoint, so the driver can fetch the next
    batch while it commits the current one."""
    state: FolderSyncState = m.state
    commands: list[Command] = []
    for i in range(0, len(uids), m.batch):
        batch = uids[i : i + m.batch]
        if checkpoint == "uidnext":
            state = replace(state, uidnext=max(batch) + 1)
        else:
            state = replace(state, low_uid=min(batch))
        commands.append(Store(batch, state))
    return state, commands


def _store_new(m: Machine) -> tuple[Machine, list[Command]]:
    if not m.run.pending:
        return _changes(m)
    then, commands = _batches(m, m.run.pending, "uidnext")
    return replace(m, state=then, run=replace(m.run, pending=())), commands


def _changes(m: Machine) -> tuple[Machine, list[Command]]:
    obs = m.run.opened
    assert obs is not None
    below = m.state.uidnext or obs.uidnext
    if obs.vanished is not None:
        return _with(m, stage=Stage.CHANGES, used_qresync=True), [Apply(obs.changed, obs.vanished)]
    if obs.condstore and m.state.highestmodseq is not None and obs.highestmodseq is not None:
        if obs.highestmodseq == m.state.highestmodseq:  # no flag changed, nothing expunged
            return _diff(_with(m, stage=Stage.CHANGES))
        return _with(m, stage=Stage.CHANGES), [SyncFlags(below, m.state.highestmodseq)]
    return _with(m, stage=Stage.CHANGES), [SyncFlags(below, None)]


def _diff(m: Machine) -> tuple[Machine, list[Command]]:
    obs = m.run.opened
    assert obs is not None
    if m.run.used_qresync:
        return _history(m)
    if m.state.phase is Phase.SYNCED and obs.exists == obs.local_count + m.run.stored_new:
        return _history(m)
    below = m.state.uidnext or obs.uidnext
    return _with(m, stage=Stage.DIFF), [Diff(_low(m.state), below)]


def _history(m: Machine) -> tuple[Machine, list[Command]]:
    if m.state.phase is Phase.INITIAL and _low(m.state) > 1:
        return _with(m, stage=Stage.HISTORY, pending=()), [Search(1, _low(m.state) - 1)]
    return _finish(m)


def _store_history(m: Machine) -> tuple[Machine, list[Command]]:
    """Store every history UID found, newest first; the last batch completes history, so
    it carries the pass's final state and no Save follows."""
    if not m.run.pending:
        synced = replace(m.state, phase=Phase.SYNCED, low_uid=1)
        return _finish(replace(m, state=synced))
    _, commands = _batches(m, m.run.pending, "low_uid")
    last = commands[-1]
    assert isinstance(last, Store)
    final = _final(m, replace(last.then, phase=Phase.SYNCED, low_uid=1))
    commands[-1] = Store(last.uids, final)
    return replace(m, state=final, run=replace(m.run, stage=Stage.FINISH, pending=())), commands


def _finish(m: Machine) -> tuple[Machine, list[Command]]:
    state = m.state
    if state.phase is Phase.INITIAL and _low(state) <= 1:
        state = replace(state, phase=Phase.SYNCED, low_uid=1)
    final = _final(m, state)
    if final == m.run.initial:  # nothing to checkpoint (an unchanged folder's usual pass)
        return replace(m, state=final, run=replace(m.run, stage=Stage.DONE)), []
    return replace(m, state=final, run=replace(m.run, stage=Stage.FINISH)), [Save(final)]


def _final(m: Machine, state: FolderSyncState) -> FolderSyncState:
    """``state`` as of the end of this pass: UIDNEXT and HIGHESTMODSEQ as SELECT saw them
    (flags fetched later are at least that new; the next pass asks CHANGEDSINCE)."""
    obs = m.run.opened
    assert obs is not None
    return replace(
        state,
        uidnext=max(state.uidnext or 0, obs.uidnext),
        highestmodseq=obs.highestmodseq if obs.condstore else state.highestmodseq,
    )


def settled_by_status(
    state: FolderSyncState, status: Mapping[str, int], *, condstore: bool
) -> FolderSyncState | None:
    """The synced state of a never-synced folder that LIST-STATUS shows empty, without a
    pass: no message exists below its UIDNEXT, and anything delivered later is new mail for
    the next pass. None when a pass is needed (not new, not empty, or the status lacks
    UIDVALIDITY, UIDNEXT or, on a CONDSTORE server, HIGHESTMODSEQ)."""
    if state.phase is not Phase.NEW or state.uidvalidity is not None:
        return None
    uidvalidity, uidnext = status.get("UIDVALIDITY"), status.get("UIDNEXT")
    highestmodseq = status.get("HIGHESTMODSEQ")
    if status.get("MESSAGES") != 0 or not uidvalidity or not uidnext:
        return None
    if condstore and not highestmodseq:
        return None
    return FolderSyncState(
        phase=Phase.SYNCED,
        uidvalidity=uidvalidity,
        uidnext=uidnext,
        highestmodseq=highestmodseq if condstore else None,
        low_uid=1,
    )
