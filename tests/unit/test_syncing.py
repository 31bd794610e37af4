"""The folder sync state machine, run against a model mailbox with crashes at every point.

The model is the IMAP semantics the machine relies on (UIDs only grow, UIDVALIDITY, modseqs,
QRESYNC/CONDSTORE reporting) kept in plain dicts; the integration tests run the real driver
against Dovecot. Convergence: after a pass, local UID → (content, flags) equals the server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailish.domain import syncing as s


@dataclass
class ModelServer:
    uidvalidity: int = 1
    uidnext: int = 1
    modseq: int = 1
    messages: dict[int, tuple[str, frozenset[str], int]] = field(default_factory=dict)
    expunged: dict[int, int] = field(default_factory=dict)  # uid -> modseq of expunge
    condstore: bool = True
    qresync: bool = True

    def add(self, content: str, flags: frozenset[str] = frozenset()) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.modseq += 1
        self.messages[uid] = (content, flags, self.modseq)
        return uid

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        if uid in self.messages:
            self.modseq += 1
            content, _, _ = self.messages[uid]
            self.messages[uid] = (content, flags, self.modseq)

    def expunge(self, uid: int) -> None:
        if self.messages.pop(uid, None) is not None:
            self.modseq += 1
            self.expunged[uid] = self.modseq

    def reset(self) -> None:
        """UIDVALIDITY changes: every message gets a new UID."""
        old = sorted(self.messages.items())
        self.uidvalidity += 1
        self.messages, self.expunged = {}, {}
        for _, (content, flags, _) in old:
            self.add(content, flags)


class Crash(Exception):
    pass


@dataclass
class ModelLocal:
    state: s.FolderSyncState = field(default_factory=s.FolderSyncState)
    messages: dict[int, tuple[str, frozenset[str]]] = field(default_factory=dict)
    budget: int | None = None  # commands until a simulated crash
    remaps: int = 0

    def tick(self) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise Crash
            self.budget -= 1


def run_pass(
    server: ModelServer, local: ModelLocal, batch: int = 3, issued: list[s.Command] | None = None
) -> s.Machine:
    machine, commands = s.start(local.state, batch=batch)
    while True:
        if issued is not None:
            issued.extend(commands)
        obs: s.Observation = s.Done()
        stored = 0
        for command in commands:
            local.tick()
            obs = execute(server, local, command)
            if isinstance(obs, s.Stored):
                stored += obs.count
                obs = s.Stored(stored)
        if machine.done:
            return machine
        machine, commands = s.step(machine, obs)
        if machine.done and not commands:
            return machine


def execute(server: ModelServer, local: ModelLocal, command: s.Command) -> s.Observation:
    match command:
        case s.Open(known):
            vanished: frozenset[int] | None = None
            changed: tuple[s.FlagChange, ...] = ()
            if server.qresync and known and known[0] == server.uidvalidity:
                since = known[1]
                vanished = frozenset(u for u, m in server.expunged.items() if m > since)
                changed = tuple(
                    s.FlagChange(u, f) for u, (_, f, m) in server.messages.items() if m > since
                )
            return s.Opened(
                uidvalidity=server.uidvalidity,
                uidnext=server.uidnext,
                exists=len(server.messages),
                highestmodseq=server.modseq if server.condstore else None,
                local_count=len(local.messages),
                condstore=server.condstore,
                qresync=server.qresync,
                vanished=vanished,
                changed=changed,
            )
        case s.Search(low, high):
            top = high if high is not None else server.uidnext
            return s.Found(tuple(sorted(u for u in server.messages if low <= u <= top)))
        case s.Store(uids, then):
            new = {u: server.messages[u][:2] for u in uids if u in server.messages}
            local.messages.update({u: v for u, v in new.items() if u not in local.messages})
            local.state = then
            return s.Stored(len(new))
        case s.Apply(changed, vanished):
            for change in changed:
                if change.uid in local.messages:
                    local.messages[change.uid] = (local.messages[change.uid][0], change.flags)
            for uid in vanished:
                local.messages.pop(uid, None)
        case s.SyncFlags(below, since):
            for uid, (_, flags, modseq) in server.messages.items():
                if uid < below and uid in local.messages and (since is None or modseq > since):
                    local.messages[uid] = (local.messages[uid][0], flags)
        case s.Diff(low, below):
            on_server = {u for u in server.messages if low <= u < below}
            here = {u for u in local.messages if low <= u < below}
            return s.Diffed(frozenset(here - on_server), frozenset(on_server - here))
        case s.Expunge(uids):
            for uid in uids:
                local.messages.pop(uid, None)
        case s.Remap():
            local.remaps += 1
            by_content = {content: uid for uid, (content, _, _) in server.messages.items()}
            remapped = {}
            for content, _ in local.messages.values():
                if content in by_content:
                    uid = by_content[content]
                    remapped[uid] = (content, server.messages[uid][1])
            local.messages = remapped
        case s.Save(state):
            local.state = state
    return s.Done()


def converged(server: ModelServer, local: ModelLocal) -> bool:
    expected = {u: (c, f) for u, (c, f, _) in server.messages.items()}
    return local.messages == expected


@pytest.mark.parametrize(("condstore", "qresync"), [(True, True), (True, False), (False, False)])
def test_initial_then_incremental(condstore: bool, qresync: bool) -> None:
    server = ModelServer(condstore=condstore, qresync=qresync)
    for i in range(10):
        server.add(f"m{i}")
    local = ModelLocal()
    run_pass(server, local)
    assert converged(server, local)
    assert local.state.phase is s.Phase.SYNCED
    server.add("new")
    server.set_flags(2, frozenset({"\\Seen"}))
    server.expunge(5)
    run_pass(server, local)
    assert converged(server, local)


def test_initial_sync_goes_newest_first_in_batches() -> None:
    server = ModelServer()
    for i in range(7):
        server.add(f"m{i}")
    machine, commands = s.start(s.FolderSyncState(), batch=3)
    local = ModelLocal()
    stored_batches = []
    while not machine.done:
        obs: s.Observation = s.Done()
        for command in commands:
            if isinstance(command, s.Store):
                stored_batches.append(command.uids)
            obs = execute(server, local, command)
        machine, commands = s.step(machine, obs)
    assert stored_batches == [(7, 6, 5), (4, 3, 2), (1,)]


def test_uidvalidity_reset_remaps_without_redownloading() -> None:
    server = ModelServer()
    for i in range(5):
        server.add(f"m{i}")
    local = ModelLocal()
    run_pass(server, local)
    server.reset()
    stores: list[tuple[int, ...]] = []
    machine, commands = s.start(local.state)
    while not machine.done:
        obs: s.Observation = s.Done()
        for command in commands:
            if isinstance(command, s.Store):
                stores.append(tuple(u for u in command.uids if u not in local.messages))
            obs = execute(server, local, command)
        machine, commands = s.step(machine, obs)
    assert converged(server, local)
    assert local.remaps == 1
    assert all(not fresh for fresh in stores), "remapped messages must not be fetched again"


def test_flapping_uidvalidity_trips_the_breaker() -> None:
    server = ModelServer()
    server.add("a")
    local = ModelLocal()
    run_pass(server, local)
    for _ in range(s.MAX_RESETS):
        server.reset()
        run_pass(server, local)
        assert local.state.phase is not s.Phase.FLAGGED
    server.reset()
    run_pass(server, local)
    assert local.state.phase is s.Phase.FLAGGED
    assert local.state.flagged_reason
    remaps = local.remaps
    server.reset()
    run_pass(server, local)
    assert local.remaps == remaps, "a flagged folder is left alone"


def test_stable_uidvalidity_resets_the_breaker() -> None:
    server = ModelServer()
    server.add("a")
    local = ModelLocal()
    run_pass(server, local)
    server.reset()
    run_pass(server, local)
    assert local.state.resets == 1
    run_pass(server, local)
    assert local.state.resets == 0


def test_out_of_order_observation_is_refused() -> None:
    machine, _ = s.start(s.FolderSyncState())
    with pytest.raises(ValueError, match="unexpected"):
        s.step(machine, s.Found(()))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3)),
        st.tuples(st.just("flag"), st.integers(1, 40)),
        st.tuples(st.just("expunge"), st.integers(1, 40)),
        st.tuples(st.just("reset"), st.just(0)),
        st.tuples(st.just("sync"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.integers(0, 30),
    history=ops,
    crash_at=st.integers(0, 60),
    batch=st.integers(1, 7),
    caps=st.sampled_from([(True, True), (True, False), (False, False)]),
)
def test_converges_after_crashes_at_any_point(
    initial: int,
    history: list[tuple[str, int]],
    crash_at: int,
    batch: int,
    caps: tuple[bool, bool],
) -> None:
    """A crash after any command, then a restart from the persisted state, converges to the
    same result as an uninterrupted run: nothing lost, nothing duplicated."""
    server = ModelServer(condstore=caps[0], qresync=caps[1])
    for i in range(initial):
        server.add(f"init{i}")
    local = ModelLocal(budget=crash_at)
    for counter, (op, arg) in enumerate(history):
        if op == "add":
            for j in range(arg):
                server.add(f"h{counter}.{j}")
        elif op == "flag":
            server.set_flags(arg, frozenset({"\\Seen", f"$k{counter}"}))
        elif op == "expunge":
            server.expunge(arg)
        elif op == "reset" and server.uidvalidity < 3:  # stay under the breaker
            server.reset()
        else:
            try:
                run_pass(server, local, batch)
            except Crash:
                local.budget = None
    local.budget = None
    run_pass(server, local, batch)
    if local.state.phase is s.Phase.INITIAL:  # a pass completes history; a second is idempotent
        run_pass(server, local, batch)
    assert converged(server, local)
    assert local.state.phase is s.Phase.SYNCED
    before = dict(local.messages)
    run_pass(server, local, batch)
    assert local.messages == before


def commands_of_a_pass(server: ModelServer, local: ModelLocal, batch: int = 3) -> list[s.Command]:
    issued: list[s.Command] = []
    run_pass(server, local, batch, issued=issued)
    return issued


def test_a_new_empty_folder_is_one_save() -> None:
    server = ModelServer(uidnext=7)  # empty, though it once held mail
    local = ModelLocal()
    issued = commands_of_a_pass(server, local)
    assert [type(c) for c in issued] == [s.Open, s.Save]
    assert local.state == s.FolderSyncState(
        phase=s.Phase.SYNCED, uidvalidity=1, uidnext=7, highestmodseq=1, low_uid=1
    )


def test_the_last_history_batch_carries_the_final_checkpoint() -> None:
    server = ModelServer()
    for i in range(5):
        server.add(f"m{i}")
    local = ModelLocal()
    issued = commands_of_a_pass(server, local, batch=2)
    assert [type(c) for c in issued] == [s.Open, s.Search, s.Store, s.Store, s.Store]
    last = issued[-1]
    assert isinstance(last, s.Store) and last.uids == (1,)
    assert last.then == local.state
    assert local.state.phase is s.Phase.SYNCED and local.state.uidnext == 6
    assert local.state.highestmodseq == server.modseq


@pytest.mark.parametrize(("condstore", "qresync"), [(True, True), (True, False)])
def test_a_pass_over_an_unchanged_folder_saves_nothing(condstore: bool, qresync: bool) -> None:
    server = ModelServer(condstore=condstore, qresync=qresync)
    for i in range(4):
        server.add(f"m{i}")
    local = ModelLocal()
    run_pass(server, local)
    issued = commands_of_a_pass(server, local)
    assert not [c for c in issued if isinstance(c, s.Save | s.Store)], issued
    server.set_flags(2, frozenset({"\\Seen"}))
    issued = commands_of_a_pass(server, local)
    assert [c for c in issued if isinstance(c, s.Save)], "a change is checkpointed"
    assert local.state.highestmodseq == server.modseq


STATUS = {"MESSAGES": 0, "UIDVALIDITY": 9, "UIDNEXT": 4, "HIGHESTMODSEQ": 12}


def test_an_empty_new_folder_is_settled_from_its_status() -> None:
    settled = s.settled_by_status(s.FolderSyncState(), STATUS, condstore=True)
    assert settled == s.FolderSyncState(
        phase=s.Phase.SYNCED, uidvalidity=9, uidnext=4, highestmodseq=12, low_uid=1
    )
    without = s.settled_by_status(s.FolderSyncState(), STATUS, condstore=False)
    assert without is not None and without.highestmodseq is None


@pytest.mark.parametrize(
    ("state", "status", "condstore"),
    [
        (s.FolderSyncState(), {**STATUS, "MESSAGES": 1}, True),  # not empty
        (s.FolderSyncState(), {k: v for k, v in STATUS.items() if k != "UIDNEXT"}, True),
        (s.FolderSyncState(), {k: v for k, v in STATUS.items() if k != "UIDVALIDITY"}, True),
        (s.FolderSyncState(), {k: v for k, v in STATUS.items() if k != "MESSAGES"}, True),
        # CONDSTORE server, mailbox without mod-sequences (NOMODSEQ): open it properly
        (s.FolderSyncState(), {k: v for k, v in STATUS.items() if k != "HIGHESTMODSEQ"}, True),
        # synced before: its own passes know better (expunges to apply, a UIDVALIDITY change)
        (s.FolderSyncState(s.Phase.SYNCED, 9, 3, 10, 1), STATUS, True),
        (s.FolderSyncState(s.Phase.INITIAL, 9, 3, 10, 2), STATUS, True),
    ],
)
def test_anything_else_gets_a_pass(
    state: s.FolderSyncState, status: dict[str, int], condstore: bool
) -> None:
    assert s.settled_by_status(state, status, condstore=condstore) is None
