"""Measurements, printed rather than asserted tightly (run with ``-s`` to see them).

- planner time for 10,000 buckets over 100 workers (initial, steady, after one death);
- moves caused by one worker's death and by one new worker, against plain rendezvous hashing
  on the same topology (rendezvous also moves only the minimum, but cannot balance loads);
- time from a worker's death (its Lease stops changing) until the operator, under kopf and
  against the emulator, has reassigned all its buckets, with a 2 s lease grace.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from mailish.domain.assignment import (
    BucketState,
    PlanSettings,
    Worker,
    plan_assignments,
    rendezvous_score,
)
from mailish.domain.ids import BucketNo, Epoch
from tests.harness.kube_emulator import KubeEmulator
from tests.operator.cluster import Cluster, OperatorThread, balanced, eventually

pytestmark = pytest.mark.timeout(120)
BUCKETS, WORKERS, ZONES = 10_000, 100, 3


def topology(count: int = WORKERS) -> list[Worker]:
    return [Worker(f"w{i:03d}", f"uid-{i}", f"zone-{i % ZONES}") for i in range(count)]


def states(assignments: dict[BucketNo, str | None], workers: list[Worker]) -> list[BucketState]:
    uids = {w.name: w.uid for w in workers}
    return [
        BucketState(b, owner, uids.get(owner or ""), Epoch(1)) for b, owner in assignments.items()
    ]


def rendezvous(workers: list[Worker], scores: dict[tuple[int, str], int]) -> dict[int, str]:
    """Plain highest-random-weight hashing: each bucket to its top-scoring worker."""
    return {b: max(workers, key=lambda w, b=b: scores[b, w.name]).name for b in range(BUCKETS)}


def spread(owners: dict[int, str]) -> str:
    loads = Counter(owners.values()).values()
    return f"{min(loads)}..{max(loads)} (stdev {statistics.pstdev(loads):.1f})"


def test_planner_and_rendezvous_at_10k_buckets_100_workers() -> None:
    workers = topology()
    empty = [BucketState(BucketNo(b), None, None, Epoch(0)) for b in range(BUCKETS)]
    started = time.perf_counter()
    plan = plan_assignments(workers, empty)
    initial = time.perf_counter() - started
    owners = {b: a.owner for b, a in plan.assignments.items()}
    started = time.perf_counter()
    steady = plan_assignments(workers, states(owners, workers))
    steady_time = time.perf_counter() - started
    assert not steady.moves
    dead, survivors = workers[0], workers[1:]
    started = time.perf_counter()
    after_death = plan_assignments(survivors, states(owners, workers))
    death_time = time.perf_counter() - started
    newcomer = [*workers, Worker("w999", "uid-999", "zone-0")]
    grown = plan_assignments(newcomer, states(owners, workers))
    uncapped = PlanSettings(max_rebalance_moves=BUCKETS)
    converged = plan_assignments(newcomer, states(owners, workers), uncapped)

    scores = {(b, w.name): rendezvous_score(b, w.name) for b in range(BUCKETS) for w in newcomer}
    hashed = rendezvous(workers, scores)
    hashed_dead = rendezvous(survivors, scores)
    hashed_grown = rendezvous(newcomer, scores)
    hashed_death_moves = sum(1 for b in range(BUCKETS) if hashed[b] != hashed_dead[b])
    hashed_grow_moves = sum(1 for b in range(BUCKETS) if hashed[b] != hashed_grown[b])
    planner_death_moves = len(after_death.moves)
    dead_load = sum(1 for owner in owners.values() if owner == dead.name)
    assert planner_death_moves == dead_load  # only the dead worker's buckets move

    after = {b: a.owner for b, a in after_death.assignments.items()}
    print(
        f"\nplanner, {BUCKETS} buckets x {WORKERS} workers: initial {initial * 1000:.0f} ms, "
        f"steady {steady_time * 1000:.0f} ms, after one death {death_time * 1000:.0f} ms"
        f"\n{'':32}{'planner':>24}{'rendezvous':>24}"
        f"\n{'moves, one worker dies':32}{planner_death_moves:>24}{hashed_death_moves:>24}"
        f"\n{'moves, one worker added':32}"
        f"{f'{len(converged.moves)} ({len(grown.moves)}/cycle)':>24}{hashed_grow_moves:>24}"
        f"\n{'load per worker, before':32}{spread(owners):>24}{spread(hashed):>24}"  # type: ignore[arg-type]
        f"\n{'load per worker, after death':32}{spread(after):>24}{spread(hashed_dead):>24}"  # type: ignore[arg-type]
    )


@pytest.fixture
async def cluster(emulator: KubeEmulator) -> AsyncIterator[Cluster]:
    async with Cluster(emulator, renew_every=0.5) as cluster:
        yield cluster


async def test_time_from_worker_death_to_reassignment(cluster: Cluster) -> None:
    buckets, grace = 200, 2.0
    workers = set()
    for zone in "abc":
        cluster.node(f"node-{zone}", zone)
        for i in range(4):
            cluster.worker(f"w-{zone}{i}", f"node-{zone}")
            workers.add(f"w-{zone}{i}")
    cluster.pool(buckets, leaseGraceSeconds=grace, resyncSeconds=5)
    async with OperatorThread(cluster.emulator.api_url):
        setup = await eventually(lambda: balanced(cluster.loads(), workers, buckets), timeout=60)
        victim = "w-a0"
        lost = cluster.loads()[victim]
        cluster.silence(victim)
        died = time.monotonic()
        await eventually(lambda: balanced(cluster.loads(), workers - {victim}, buckets), timeout=30)
        took = time.monotonic() - died
    assert grace * 0.7 <= took <= grace + 2.0, took
    print(
        f"\n{buckets} buckets, {len(workers)} workers: initial assignment {setup:.2f}s; "
        f"worker death -> its {lost} buckets reassigned {took:.2f}s "
        f"(lease grace {grace:.0f}s, renewals every 0.5s)"
    )
