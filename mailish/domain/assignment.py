"""Which worker owns each bucket: the planner the operator runs every reconcile cycle.

Why it is pure: the operator only gathers facts (eligible workers, bucket status) and writes the
plan back; everything that decides ownership lives here, so it is deterministic, replayable from
a logged input and property-tested. The output never depends on the order of the inputs.

Guarantees of ``plan_assignments`` (``B`` = number of non-paused buckets):

1. Every non-paused bucket ends with exactly one eligible worker as owner. With no eligible
   worker at all, owned buckets become unowned (reason ``no_workers``); unowned ones stay so.
2. Loads (non-paused buckets per worker) differ by at most one within each track, as soon as
   the rebalance cap allows (see 6).
3. Sticky and minimal: buckets of ineligible, missing or replaced (uid mismatch) owners must
   move; otherwise only the excess of overloaded workers moves, so the number of moves is the
   fewest that reaches a balanced state.
4. Never by input order: a moving bucket goes to the worker with the most free quota, then to
   the zone with the fewest buckets per worker, then by rendezvous hashing (highest BLAKE2b of
   bucket and worker name). The buckets leaving an overloaded worker are its lowest-scoring
   ones (zone spread cannot tell one worker's buckets apart).
5. Every move bumps the epoch by one; buckets that stay keep theirs.
6. Orphans move at once; moves made only to rebalance or to meet the canary share are capped at
   ``max_rebalance_moves`` per call, taken from the most overloaded workers first. Each call
   shrinks the remaining imbalance by the moves it makes, so repeated calls converge.
7. Canary workers share ``C = round_half_up(canary_share * B)`` buckets among themselves (all
   ``B`` if there is no stable worker, none if there is no canary worker); stable workers share
   the rest. Each track is its own balanced pool.

Reasons: ``initial`` (had no owner), ``orphaned`` (owner ineligible, unknown or replaced — it may
land on the same-named new pod, still a move with a new epoch so the old pod is fenced),
``rebalance``, ``track`` (crossed tracks for the canary share), ``no_workers``; buckets that
stay are ``unchanged`` or ``paused``.

Paused buckets are skipped: they keep owner and epoch (reason ``paused``) even if the owner is
no longer eligible, and they count neither in ``B`` nor in any worker's load. Pausing is how an
operator freezes a bucket during maintenance, so the planner must not touch it.

Algorithm::

    bucket states ─┬─ owner eligible, same uid ──► held[w]
                   └─ anything else ───────────► orphans (must move)
    per track:  N buckets over W workers → quota N//W, +1 for the N%W holding most (then name)
    held[w] > quota[w]  → excess: its lowest-rendezvous buckets leave (at most the cap,
                          one at a time from the most overloaded worker)
    held[w] < quota[w]  → room
    orphans + leavers, in bucket order, each to the worker with the most room;
    ties: zone with fewest buckets per worker, then highest rendezvous score

Keeping ``min(held, quota)`` on every worker is optimal, and giving the ``+1`` quotas to the
workers holding most maximises that sum, hence property 3.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

from mailish.domain.ids import BucketNo, Epoch

STABLE: Final = "stable"
CANARY: Final = "canary"
TRACKS: Final = frozenset({STABLE, CANARY})

Reason = Literal["initial", "orphaned", "rebalance", "track", "no_workers", "unchanged", "paused"]
# Reasons of buckets whose owner changes in this plan; the others keep owner and epoch.
MOVE_REASONS: Final[frozenset[Reason]] = frozenset(
    {"initial", "orphaned", "rebalance", "track", "no_workers"}
)


@dataclass(frozen=True, slots=True)
class Worker:
    """An eligible worker pod. ``uid`` tells a replacement pod from its same-named predecessor."""

    name: str
    uid: str
    zone: str
    track: str = STABLE

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("worker name must not be empty")
        if self.track not in TRACKS:
            raise ValueError(f"track must be one of {sorted(TRACKS)}, not {self.track!r}")


@dataclass(frozen=True, slots=True)
class BucketState:
    bucket: BucketNo
    owner: str | None
    owner_uid: str | None
    epoch: Epoch
    paused: bool = False


@dataclass(frozen=True, slots=True)
class PlanSettings:
    max_rebalance_moves: int = 8
    canary_share: float = 0.0

    def __post_init__(self) -> None:
        if self.max_rebalance_moves < 0:
            raise ValueError(f"max_rebalance_moves must be >= 0, not {self.max_rebalance_moves}")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be in [0, 1], not {self.canary_share}")


DEFAULT_SETTINGS: Final = PlanSettings()


@dataclass(frozen=True, slots=True)
class Assignment:
    owner: str | None
    owner_uid: str | None
    epoch: Epoch
    reason: Reason


@dataclass(frozen=True, slots=True)
class Move:
    bucket: BucketNo
    from_owner: str | None
    to_owner: str | None
    reason: Reason
    new_epoch: Epoch


@dataclass(frozen=True, slots=True)
class Plan:
    """Every input bucket's assignment, and the changed ones again as moves, in bucket order."""

    assignments: dict[BucketNo, Assignment]
    moves: tuple[Move, ...]


def rendezvous_score(bucket: int, worker_name: str) -> int:
    """Highest-random-weight score: stable across processes, unlike ``hash()``."""
    digest = hashlib.blake2b(f"{bucket}/{worker_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def canary_target(active: int, share: float, *, has_stable: bool, has_canary: bool) -> int:
    """How many of ``active`` buckets the canary track gets (round half up)."""
    if not has_canary:
        return 0
    if not has_stable:
        return active
    return min(active, math.floor(share * active + 0.5))


def plan_assignments(
    workers: Iterable[Worker],
    buckets: Iterable[BucketState],
    settings: PlanSettings = DEFAULT_SETTINGS,
) -> Plan:
    pool = _index_workers(workers)
    states = _index_buckets(buckets)
    if not pool:
        return _unassign_all(states)

    held: dict[str, list[BucketNo]] = {name: [] for name in pool}
    orphans: dict[BucketNo, BucketState] = {}
    for state in states:
        if state.paused:
            continue
        owner = pool.get(state.owner) if state.owner is not None else None
        if owner is not None and owner.uid == state.owner_uid:
            held[owner.name].append(state.bucket)
        else:
            orphans[state.bucket] = state

    load = {name: len(bs) for name, bs in held.items()}
    quota = _quotas(pool, load, len(orphans) + sum(load.values()), settings.canary_share)
    leavers = _pick_leavers(held, quota, settings.max_rebalance_moves)
    for donor in leavers.values():
        load[donor] -= 1

    placer = _Placer(pool, load, quota)
    targets = {bucket: placer.take(bucket) for bucket in sorted([*orphans, *leavers])}

    assignments: dict[BucketNo, Assignment] = {}
    moves: list[Move] = []
    for state in states:
        target = targets.get(state.bucket)
        if target is None:
            reason: Reason = "paused" if state.paused else "unchanged"
            assignments[state.bucket] = Assignment(
                state.owner, state.owner_uid, state.epoch, reason
            )
            continue
        if state.bucket in orphans:
            reason = "initial" if state.owner is None else "orphaned"
        else:
            reason = "track" if pool[leavers[state.bucket]].track != target.track else "rebalance"
        epoch = Epoch(state.epoch + 1)
        assignments[state.bucket] = Assignment(target.name, target.uid, epoch, reason)
        moves.append(Move(state.bucket, state.owner, target.name, reason, epoch))
    return Plan(assignments, tuple(moves))


def _index_workers(workers: Iterable[Worker]) -> dict[str, Worker]:
    pool: dict[str, Worker] = {}
    for worker in sorted(workers, key=lambda w: w.name):
        if worker.name in pool:
            raise ValueError(f"duplicate worker name {worker.name!r}")
        pool[worker.name] = worker
    return pool


def _index_buckets(buckets: Iterable[BucketState]) -> list[BucketState]:
    states = sorted(buckets, key=lambda s: s.bucket)
    for before, after in itertools.pairwise(states):
        if before.bucket == after.bucket:
            raise ValueError(f"duplicate bucket {after.bucket}")
    return states


def _unassign_all(states: list[BucketState]) -> Plan:
    assignments: dict[BucketNo, Assignment] = {}
    moves: list[Move] = []
    for state in states:
        if state.paused or state.owner is None:
            reason: Reason = "paused" if state.paused else "unchanged"
            assignments[state.bucket] = Assignment(
                state.owner, state.owner_uid, state.epoch, reason
            )
            continue
        epoch = Epoch(state.epoch + 1)
        assignments[state.bucket] = Assignment(None, None, epoch, "no_workers")
        moves.append(Move(state.bucket, state.owner, None, "no_workers", epoch))
    return Plan(assignments, tuple(moves))


def _quotas(
    pool: Mapping[str, Worker], load: Mapping[str, int], active: int, share: float
) -> dict[str, int]:
    tracks = {
        track: [name for name, w in pool.items() if w.track == track] for track in (STABLE, CANARY)
    }
    canary = canary_target(
        active, share, has_stable=bool(tracks[STABLE]), has_canary=bool(tracks[CANARY])
    )
    quota: dict[str, int] = {}
    for names, size in ((tracks[STABLE], active - canary), (tracks[CANARY], canary)):
        if not names:
            continue
        base, extra = divmod(size, len(names))
        # The +1 goes where it saves a move: to the workers already holding the most.
        ranked = sorted(names, key=lambda name: (-load[name], name))
        for rank, name in enumerate(ranked):
            quota[name] = base + (1 if rank < extra else 0)
    return quota


def _leaving_order(worker_name: str, buckets: list[BucketNo]) -> list[BucketNo]:
    return sorted(buckets, key=lambda b: (rendezvous_score(b, worker_name), b))


def _pick_leavers(
    held: Mapping[str, list[BucketNo]], quota: Mapping[str, int], cap: int
) -> dict[BucketNo, str]:
    """Buckets that leave an overloaded worker this call, mapped to that worker."""
    excess = {
        name: _leaving_order(name, buckets)[: len(buckets) - quota[name]]
        for name, buckets in held.items()
        if len(buckets) > quota[name]
    }
    if sum(map(len, excess.values())) <= cap:
        return {bucket: name for name, buckets in excess.items() for bucket in buckets}
    # Throttled: one bucket at a time from whoever is furthest over quota, then most loaded.
    heap = [(-len(buckets), -len(held[name]), name) for name, buckets in excess.items()]
    heapq.heapify(heap)
    taken: dict[BucketNo, str] = {}
    for _ in range(cap):
        over, loaded, name = heapq.heappop(heap)
        taken[excess[name][len(excess[name]) + over]] = name
        if over + 1 < 0:
            heapq.heappush(heap, (over + 1, loaded + 1, name))
    return taken


class _Placer:
    """Hands out free quota slots, one bucket at a time."""

    def __init__(
        self, pool: Mapping[str, Worker], load: Mapping[str, int], quota: Mapping[str, int]
    ) -> None:
        self._pool = pool
        self._room = {name: quota[name] - load[name] for name in pool if quota[name] > load[name]}
        self._zone_size: dict[str, int] = {}
        self._zone_load: dict[str, int] = {}
        for name, worker in pool.items():
            self._zone_size[worker.zone] = self._zone_size.get(worker.zone, 0) + 1
            self._zone_load[worker.zone] = self._zone_load.get(worker.zone, 0) + load[name]

    def take(self, bucket: BucketNo) -> Worker:
        most = max(self._room.values())
        candidates = [self._pool[name] for name, room in self._room.items() if room == most]
        spread = {
            zone: Fraction(self._zone_load[zone], self._zone_size[zone])
            for zone in {w.zone for w in candidates}
        }
        emptiest = min(spread.values())
        zones = {zone for zone, share in spread.items() if share == emptiest}
        chosen = max(
            (w for w in candidates if w.zone in zones),
            key=lambda w: (rendezvous_score(bucket, w.name), w.name),
        )
        self._zone_load[chosen.zone] += 1
        self._room[chosen.name] -= 1
        if not self._room[chosen.name]:
            del self._room[chosen.name]
        return chosen
