"""The bucket planner and worker eligibility.

Properties are checked against an independent reading of the spec (``check_plan``), over random
clusters; small cases are checked against a brute-force search for the fewest moves.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailish.domain.assignment import (
    CANARY,
    MOVE_REASONS,
    STABLE,
    Assignment,
    BucketState,
    Plan,
    PlanSettings,
    Worker,
    plan_assignments,
    rendezvous_score,
)
from mailish.domain.eligibility import (
    LeaseObserver,
    WorkerFacts,
    eligible,
    select_eligible,
)
from mailish.domain.ids import BucketNo, Epoch

UNLIMITED = 10**9
PROPERTY = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])


# --- model ------------------------------------------------------------------------------------


def valid_owner(state: BucketState, workers: Iterable[Worker]) -> str | None:
    """The owner that may keep the bucket, or None for an orphan."""
    for worker in workers:
        if worker.name == state.owner and worker.uid == state.owner_uid:
            return worker.name
    return None


def expected_canary(active: int, share: float, workers: Sequence[Worker]) -> int:
    tracks = {w.track for w in workers}
    if CANARY not in tracks:
        return 0
    if STABLE not in tracks:
        return active
    return math.floor(share * active + 0.5)


def loads(plan: Plan, states: Sequence[BucketState], workers: Sequence[Worker]) -> Counter[str]:
    paused = {s.bucket for s in states if s.paused}
    counts = Counter({w.name: 0 for w in workers})
    for bucket, assignment in plan.assignments.items():
        if bucket not in paused and assignment.owner is not None:
            counts[assignment.owner] += 1
    return counts


def apply(states: Sequence[BucketState], plan: Plan) -> list[BucketState]:
    return [
        dataclasses.replace(
            s,
            owner=plan.assignments[s.bucket].owner,
            owner_uid=plan.assignments[s.bucket].owner_uid,
            epoch=plan.assignments[s.bucket].epoch,
        )
        for s in states
    ]


def check_plan(
    workers: Sequence[Worker], states: Sequence[BucketState], config: PlanSettings, plan: Plan
) -> None:
    """Everything a plan must satisfy whatever the cap; balance only when the cap allows."""
    by_name = {w.name: w for w in workers}
    by_bucket = {s.bucket: s for s in states}
    assert list(plan.assignments) == sorted(by_bucket)
    moves = {m.bucket: m for m in plan.moves}
    assert [m.bucket for m in plan.moves] == sorted(moves)
    gained: set[str] = set()
    lost: set[str] = set()
    for bucket, state in by_bucket.items():
        got = plan.assignments[bucket]
        keeper = valid_owner(state, workers)
        if state.paused:
            assert got == Assignment(state.owner, state.owner_uid, state.epoch, "paused")
            assert bucket not in moves
            continue
        if bucket not in moves:
            assert got == Assignment(state.owner, state.owner_uid, state.epoch, "unchanged")
            assert keeper is not None or not workers
        else:
            move = moves[bucket]
            assert got.reason in MOVE_REASONS
            assert (move.from_owner, move.to_owner, move.reason) == (
                state.owner,
                got.owner,
                got.reason,
            )
            assert got.epoch == move.new_epoch == state.epoch + 1
        if not workers:
            assert got.owner is None
            assert got.reason == ("unchanged" if state.owner is None else "no_workers")
            continue
        assert got.owner in by_name
        assert got.owner_uid == by_name[got.owner].uid
        if keeper is None:
            assert got.reason == ("initial" if state.owner is None else "orphaned")
        elif bucket in moves:
            crossed = by_name[keeper].track != by_name[got.owner].track
            assert got.reason == ("track" if crossed else "rebalance")
            lost.add(keeper)
            gained.add(got.owner)
    assert not lost & gained, "a worker both gave and received buckets"
    optional = sum(m.reason in ("rebalance", "track") for m in plan.moves)
    assert optional <= config.max_rebalance_moves


def check_balanced(
    workers: Sequence[Worker], states: Sequence[BucketState], config: PlanSettings, plan: Plan
) -> None:
    counts = loads(plan, states, workers)
    active = sum(not s.paused for s in states)
    canary = sum(counts[w.name] for w in workers if w.track == CANARY)
    assert canary == expected_canary(active, config.canary_share, workers)
    for track in (STABLE, CANARY):
        pool = [counts[w.name] for w in workers if w.track == track]
        if pool:
            assert max(pool) - min(pool) <= 1, (track, pool)


def check_sticky(workers: Sequence[Worker], states: Sequence[BucketState], plan: Plan) -> None:
    """Only excess moves, and the +1 slots went where they save a move."""
    held = Counter(
        keeper for s in states if not s.paused and (keeper := valid_owner(s, workers)) is not None
    )
    final = loads(plan, states, workers)
    orphans = sum(not s.paused and valid_owner(s, workers) is None for s in states)
    assert len(plan.moves) == orphans + sum(max(0, held[w.name] - final[w.name]) for w in workers)
    for a, b in itertools.permutations(workers, 2):
        if a.track == b.track and final[b.name] == final[a.name] + 1:
            assert not (held[a.name] > final[a.name] and held[b.name] <= final[a.name])


# --- strategies -------------------------------------------------------------------------------


@st.composite
def clusters(
    draw: st.DrawFn, min_workers: int = 1, max_workers: int = 12, max_buckets: int = 200
) -> tuple[list[Worker], list[BucketState], PlanSettings]:
    zones = draw(st.integers(1, 4))
    count = draw(st.integers(min_workers, max_workers))
    workers = [
        Worker(
            f"w{i}",
            f"uid-{i}",
            f"zone-{draw(st.integers(0, zones - 1))}",
            draw(st.sampled_from([STABLE, STABLE, CANARY])),
        )
        for i in range(count)
    ]
    hot = draw(st.integers(0, max(count - 1, 0)))
    # Owner index: a worker, a ghost (index >= count), or a hot worker to create skew.
    owner = st.one_of(st.none(), st.integers(0, count + 1), st.just(hot))
    size = draw(st.integers(0, max_buckets), label="buckets")
    rows = draw(
        st.lists(
            st.tuples(
                owner,
                st.sampled_from([True, True, True, False]),
                st.integers(0, 3),
                st.integers(0, 9).map(lambda x: x == 0),
            ),
            min_size=size,
            max_size=size,
        )
    )
    states = []
    for bucket, (index, same_uid, epoch, paused) in enumerate(rows):
        if index is None:
            name, uid = None, None
        elif index >= count:
            name, uid = f"ghost-{index}", "ghost"
        else:
            name, uid = f"w{index}", f"uid-{index}" if same_uid else "replaced"
        states.append(BucketState(BucketNo(bucket), name, uid, Epoch(epoch), paused))
    config = PlanSettings(
        max_rebalance_moves=draw(st.one_of(st.integers(0, 20), st.just(UNLIMITED))),
        canary_share=draw(
            st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0))
        ),
    )
    return workers, states, config


def unlimited(config: PlanSettings) -> PlanSettings:
    return dataclasses.replace(config, max_rebalance_moves=UNLIMITED)


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(clusters(min_workers=0))
def test_plan_properties(cluster: tuple[list[Worker], list[BucketState], PlanSettings]) -> None:
    workers, states, config = cluster
    plan = plan_assignments(workers, states, config)
    check_plan(workers, states, config, plan)
    if config.max_rebalance_moves == UNLIMITED and workers:
        check_balanced(workers, states, config, plan)
        check_sticky(workers, states, plan)


@PROPERTY
@given(clusters(min_workers=0), st.randoms(use_true_random=False))
def test_output_ignores_input_order(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings], rnd: random.Random
) -> None:
    workers, states, config = cluster
    expected = plan_assignments(workers, states, config)
    shuffled = plan_assignments(
        rnd.sample(workers, len(workers)), rnd.sample(states, len(states)), config
    )
    assert shuffled == expected
    assert list(shuffled.assignments) == list(expected.assignments)


@PROPERTY
@given(clusters())
def test_applied_plan_is_a_fixed_point(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings],
) -> None:
    workers, states, config = cluster
    after = apply(states, plan_assignments(workers, states, unlimited(config)))
    again = plan_assignments(workers, after, config)
    assert again.moves == ()
    assert {a.reason for a in again.assignments.values()} <= {"unchanged", "paused"}


@PROPERTY
@given(clusters(), st.data())
def test_zone_loss_moves_only_that_zones_buckets(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings], data: st.DataObject
) -> None:
    workers, states, config = cluster
    before = apply(states, plan_assignments(workers, states, unlimited(config)))
    zone = data.draw(st.sampled_from(sorted({w.zone for w in workers})))
    gone = {w.name for w in workers if w.zone == zone}
    survivors = [w for w in workers if w.zone != zone]
    plan = plan_assignments(survivors, before, config)
    check_plan(survivors, before, config, plan)
    owned_by_zone = {s.bucket for s in before if s.owner in gone and not s.paused}
    assert {m.bucket for m in plan.moves} == owned_by_zone
    if survivors:
        check_balanced(survivors, before, config, plan)


@PROPERTY
@given(clusters(max_workers=11), st.data())
def test_scale_out_moves_only_the_new_workers_share(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings], data: st.DataObject
) -> None:
    workers, states, config = cluster
    if data.draw(st.booleans(), label="single track"):
        workers = [dataclasses.replace(w, track=STABLE) for w in workers]
    before = apply(states, plan_assignments(workers, states, unlimited(config)))
    track = data.draw(st.sampled_from(sorted({w.track for w in workers})), label="track")
    newcomer = Worker("new", "uid-new", data.draw(st.sampled_from(["zone-0", "zone-9"])), track)
    grown = [*workers, newcomer]
    plan = plan_assignments(grown, before, unlimited(config))
    check_plan(grown, before, unlimited(config), plan)
    check_balanced(grown, before, config, plan)
    assert all(m.to_owner == "new" for m in plan.moves)
    active = sum(not s.paused for s in states)
    in_track = sum(w.track == track for w in workers)
    track_buckets = sum(
        1
        for s in before
        if not s.paused and s.owner in {w.name for w in workers if w.track == track}
    )
    assert len(plan.moves) <= math.ceil(track_buckets / (in_track + 1))
    if in_track == len(workers):
        assert len(plan.moves) <= math.ceil(active / (len(workers) + 1))


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.integers(1, 5))
def test_throttled_rebalance_converges(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings], cap: int
) -> None:
    workers, states, config = cluster
    config = dataclasses.replace(config, max_rebalance_moves=cap)
    full = plan_assignments(workers, states, unlimited(config))
    optional = sum(m.reason in ("rebalance", "track") for m in full.moves)
    orphans = len(full.moves) - optional
    bound = max(math.ceil(optional / cap), 1 if orphans else 0)
    calls_with_moves = 0
    for _ in range(bound + 1):
        plan = plan_assignments(workers, states, config)
        check_plan(workers, states, config, plan)
        if not plan.moves:
            break
        calls_with_moves += 1
        states = apply(states, plan)
    assert plan.moves == (), f"not converged after {bound + 1} calls"
    assert calls_with_moves <= bound
    check_balanced(workers, states, config, plan)


@st.composite
def small_clusters(draw: st.DrawFn) -> tuple[list[Worker], list[BucketState], PlanSettings]:
    return draw(clusters(max_workers=3, max_buckets=7))


def brute_force_fewest_moves(
    workers: Sequence[Worker], states: Sequence[BucketState], share: float
) -> int:
    active = [s for s in states if not s.paused]
    canary = expected_canary(len(active), share, workers)
    best = None
    for owners in itertools.product(workers, repeat=len(active)):
        counts = Counter({w.name: 0 for w in workers}) + Counter(w.name for w in owners)
        if sum(counts[w.name] for w in workers if w.track == CANARY) != canary:
            continue
        pools = [[counts[w.name] for w in workers if w.track == t] for t in (STABLE, CANARY)]
        if any(pool and max(pool) - min(pool) > 1 for pool in pools):
            continue
        cost = sum(
            valid_owner(s, workers) != owner.name for s, owner in zip(active, owners, strict=True)
        )
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@settings(deadline=None, max_examples=250)
@given(small_clusters())
def test_moves_are_minimal_by_brute_force(
    cluster: tuple[list[Worker], list[BucketState], PlanSettings],
) -> None:
    workers, states, config = cluster
    config = unlimited(config)
    plan = plan_assignments(workers, states, config)
    check_plan(workers, states, config, plan)
    check_balanced(workers, states, config, plan)
    assert len(plan.moves) == brute_force_fewest_moves(workers, states, config.canary_share)


# --- examples ---------------------------------------------------------------------------------


def state(
    bucket: int,
    owner: str | None = None,
    uid: str | None = None,
    epoch: int = 0,
    *,
    paused: bool = False,
) -> BucketState:
    return BucketState(BucketNo(bucket), owner, uid, Epoch(epoch), paused)


A = Worker("a", "ua", "z1")
B = Worker("b", "ub", "z2")


def test_initial_assignment_is_balanced_and_bumps_epochs() -> None:
    plan = plan_assignments([A, B], [state(b) for b in range(5)])
    assert sorted(Counter(a.owner for a in plan.assignments.values()).values()) == [2, 3]
    assert {(m.reason, m.new_epoch, m.from_owner) for m in plan.moves} == {("initial", 1, None)}


def test_replaced_pod_orphans_its_buckets_even_under_the_same_name() -> None:
    states = [state(0, "a", "old-uid", 4), state(1, "b", "ub", 2)]
    plan = plan_assignments([A, B], states, PlanSettings(max_rebalance_moves=0))
    assert plan.assignments[BucketNo(0)] == Assignment("a", "ua", Epoch(5), "orphaned")
    assert plan.assignments[BucketNo(1)] == Assignment("b", "ub", Epoch(2), "unchanged")


def test_paused_bucket_keeps_an_ineligible_owner_and_does_not_count_as_load() -> None:
    states = [state(0, "gone", "ug", 3, paused=True), state(1, "a", "ua", 1), state(2)]
    plan = plan_assignments([A, B], states)
    assert plan.assignments[BucketNo(0)] == Assignment("gone", "ug", Epoch(3), "paused")
    assert plan.assignments[BucketNo(2)].owner == "b"


def test_no_workers_unassigns_owned_buckets_only() -> None:
    plan = plan_assignments([], [state(0, "a", "ua", 2), state(1, None, None, 5)])
    assert plan.assignments[BucketNo(0)] == Assignment(None, None, Epoch(3), "no_workers")
    assert plan.assignments[BucketNo(1)] == Assignment(None, None, Epoch(5), "unchanged")
    assert [m.bucket for m in plan.moves] == [0]


def test_canary_share_moves_are_track_moves_and_capped() -> None:
    canary = Worker("c", "uc", "z1", CANARY)
    states = [state(b, "a", "ua", 1) for b in range(10)]
    plan = plan_assignments([A, canary], states, PlanSettings(3, canary_share=0.5))
    assert [m.reason for m in plan.moves] == ["track"] * 3
    plan = plan_assignments([A, canary], states, PlanSettings(UNLIMITED, canary_share=0.5))
    assert len(plan.moves) == 5


def test_leaving_buckets_are_the_lowest_rendezvous_scores() -> None:
    states = [state(b, "a", "ua", 1) for b in range(6)]
    plan = plan_assignments([A, B], states, PlanSettings(UNLIMITED))
    ranked = sorted(range(6), key=lambda b: rendezvous_score(b, "a"))
    assert sorted(m.bucket for m in plan.moves) == sorted(ranked[:3])


def test_orphans_fill_the_biggest_gap_first_while_rebalance_is_throttled() -> None:
    a, b, c = (Worker(n, f"u{n}", "z") for n in "abc")
    states = [state(i, "a", "ua", 1) for i in range(5)]
    states += [state(5, "c", "uc", 1), state(6, "c", "uc", 1), state(7), state(8)]
    plan = plan_assignments([a, b, c], states, PlanSettings(0))
    assert [(m.bucket, m.to_owner) for m in plan.moves] == [(7, "b"), (8, "b")]


def test_orphans_prefer_the_emptier_zone_over_rendezvous() -> None:
    # b and c both have room for one; c's zone already carries a's buckets, so b must win even
    # for an orphan whose rendezvous score favours c.
    orphan = next(
        n for n in itertools.count(3) if rendezvous_score(n, "c") > rendezvous_score(n, "b")
    )
    a2 = Worker("a2", "ua2", "z1")
    crowded = Worker("c", "uc", "z1")
    states = [state(0, "a", "ua", 1), state(1, "a", "ua", 1), state(2, "a2", "ua2", 1)]
    states.append(state(orphan, "ghost", "ug", 1))
    plan = plan_assignments([A, a2, B, crowded], states, PlanSettings(0))
    assert plan.assignments[BucketNo(orphan)] == Assignment("b", "ub", Epoch(2), "orphaned")
    alone = Worker("c", "uc", "z3")
    plan = plan_assignments([A, a2, B, alone], states, PlanSettings(0))
    assert plan.assignments[BucketNo(orphan)].owner == "c"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: PlanSettings(max_rebalance_moves=-1),
        lambda: PlanSettings(canary_share=1.5),
        lambda: Worker("x", "u", "z", track="beta"),
        lambda: plan_assignments([A, A], []),
        lambda: plan_assignments([A], [state(0), state(0)]),
    ],
)
def test_invalid_input_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        bad()  # type: ignore[operator]


def test_planning_10000_buckets_over_100_workers_is_quick() -> None:
    workers = [Worker(f"w{i:03}", f"u{i}", f"z{i % 4}", STABLE) for i in range(100)]
    states = [state(b) for b in range(10_000)]
    started = time.perf_counter()
    plan = plan_assignments(workers, states, PlanSettings(UNLIMITED))
    initial = time.perf_counter() - started
    steady_states = apply(states, plan)
    started = time.perf_counter()
    again = plan_assignments(workers[:-1], steady_states, PlanSettings(UNLIMITED))
    worker_loss = time.perf_counter() - started
    print(f"\nplan 10000 x 100: initial {initial:.3f}s, one worker lost {worker_loss:.3f}s")
    assert len(plan.moves) == 10_000
    assert len(again.moves) == 100
    assert initial < 5
    assert worker_loss < 5


# --- eligibility ------------------------------------------------------------------------------

HEALTHY = WorkerFacts(
    name="w1",
    uid="u1",
    zone="z1",
    track=STABLE,
    pod_ready=True,
    terminating=False,
    drain=False,
    node_ready=True,
    node_taints=frozenset({"example.com/dedicated"}),
    lease_seen_renew_at=100.0,
)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"terminating": True}, "terminating"),
        ({"pod_ready": False}, "not_ready"),
        ({"drain": True}, "draining"),
        ({"node_ready": False}, "node_not_ready"),
        ({"node_taints": frozenset({"node.kubernetes.io/unreachable"})}, "node_tainted"),
        ({"node_taints": frozenset({"node.kubernetes.io/not-ready"})}, "node_tainted"),
        ({"node_taints": frozenset({"node.kubernetes.io/out-of-service"})}, "node_tainted"),
        ({"lease_seen_renew_at": None}, "lease_missing"),
        ({"lease_seen_renew_at": 100.0 - 30.001}, "lease_stale"),
        ({"lease_seen_renew_at": 100.0 - 30.0}, None),
        ({"terminating": True, "pod_ready": False, "lease_seen_renew_at": None}, "terminating"),
        ({"drain": True, "node_ready": False}, "draining"),
    ],
)
def test_eligibility_reasons(change: dict[str, object], reason: str | None) -> None:
    facts = dataclasses.replace(HEALTHY, **change)  # type: ignore[arg-type]
    assert eligible(facts, now=100.0, lease_grace=30.0) == (reason is None, reason)


def test_select_eligible_splits_and_reports() -> None:
    sick = dataclasses.replace(HEALTHY, name="w0", drain=True)
    workers, refused = select_eligible([HEALTHY, sick], now=100.0, lease_grace=30.0)
    assert workers == (Worker("w1", "u1", "z1", STABLE),)
    assert refused == {"w0": "draining"}


def test_lease_staleness_follows_last_seen_change_not_renew_time() -> None:
    observer = LeaseObserver()
    future = "2099-01-01T00:00:00.000000Z"
    observer.observe("w1", future, now=10.0)
    observer.observe("w1", future, now=50.0)
    assert observer.seen_at("w1") == 10.0

    def check(now: float) -> tuple[bool, str | None]:
        facts = dataclasses.replace(HEALTHY, lease_seen_renew_at=observer.seen_at("w1"))
        return eligible(facts, now=now, lease_grace=30.0)

    assert check(40.0) == (True, None)
    assert check(50.0) == (False, "lease_stale")
    observer.observe("w1", "2099-01-01T00:00:01.000000Z", now=55.0)
    assert observer.seen_at("w1") == 55.0
    assert check(60.0) == (True, None)
    observer.observe("w1", None, now=61.0)
    assert check(61.0) == (False, "lease_missing")
    observer.observe("w1", "x", now=70.0)
    observer.forget("w1")
    assert observer.seen_at("w1") is None
    assert observer.seen_at("never-seen") is None
