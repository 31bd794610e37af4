"""The operator, running for real under kopf against the emulator, in cluster scenarios.

Each scenario builds nodes in zones and worker pods with heartbeating Leases, starts the
operator, changes the cluster the way Kubernetes would, and checks the MailishBucket statuses
the operator writes: who owns what, which epochs moved, and that nothing else moved. Lease
grace is one second so a scenario takes a second or two.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import pytest

from tests.harness.kube_emulator import KubeEmulator
from tests.operator.cluster import (
    BUCKETS,
    NS,
    PODS,
    POOLS,
    Cluster,
    OperatorThread,
    balanced,
    eventually,
)

pytestmark = pytest.mark.timeout(60)
GRACE = 1.0


@pytest.fixture
async def cluster(emulator: KubeEmulator) -> AsyncIterator[Cluster]:
    async with Cluster(emulator, renew_every=0.2) as cluster:
        yield cluster


def build(cluster: Cluster, zones: str, per_zone: int, **pool: object) -> set[str]:
    """Nodes ``node-<zone>`` with ``per_zone`` workers ``w-<zone><i>`` each, and the pool."""
    workers = set()
    for zone in zones:
        cluster.node(f"node-{zone}", zone)
        for i in range(per_zone):
            cluster.worker(f"w-{zone}{i}", f"node-{zone}")
            workers.add(f"w-{zone}{i}")
    spec = {"leaseGraceSeconds": GRACE, "resyncSeconds": 1, **pool}
    cluster.pool(int(spec.pop("buckets", 60)), **spec)
    return workers


def moved(before: dict[int, int], after: dict[int, int]) -> set[int]:
    return {b for b, epoch in after.items() if epoch != before.get(b)}


def held_by(owners: dict[int, str | None], names: Iterable[str]) -> set[int]:
    names = set(names)
    return {b for b, owner in owners.items() if owner in names}


async def test_initial_balance_spreads_zones(cluster: Cluster) -> None:
    workers = build(cluster, "abc", 2)
    async with OperatorThread(cluster.emulator.api_url):
        took = await eventually(lambda: balanced(cluster.loads(), workers, 60))
        assert set(cluster.epochs().values()) == {1}
        zones = Counter(str(owner)[2] for owner in cluster.owners().values())
        assert zones == {"a": 20, "b": 20, "c": 20}
        assert cluster.moved_events() == []  # first assignments are not moves
        pool = cluster.emulator.get(POOLS, NS, "mailish")
        assert pool["status"]["eligibleWorkers"] == 6 and pool["status"]["unownedBuckets"] == 0
        cluster.emulator.delete(POOLS, NS, "mailish")  # kopf stops the daemon, drops its finalizer
        await eventually(lambda: not cluster.emulator.list(POOLS, NS))
    assert len(cluster.owners()) == 60  # the buckets stay, with their owners
    reasons = {b["status"]["reason"] for b in cluster.emulator.list(BUCKETS, NS)}
    assert reasons == {"initial"}
    print(f"\ninitial assignment, 60 buckets over 6 workers in 3 zones: {took:.2f}s")


async def test_node_not_ready_moves_only_its_workers_buckets(cluster: Cluster) -> None:
    workers = build(cluster, "abc", 2)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 60))
        before, owners = cluster.epochs(), cluster.owners()
        lost = held_by(owners, {"w-a0", "w-a1"})
        cluster.set_node("node-a", ready=False)
        survivors = workers - {"w-a0", "w-a1"}
        await eventually(lambda: balanced(cluster.loads(), survivors, 60))
        await eventually(lambda: len(cluster.moved_events()) == len(lost))  # one Event per move
    after = cluster.epochs()
    assert moved(before, after) == lost
    assert all(after[b] == before[b] + 1 for b in lost)
    statuses = {b["spec"]["bucket"]: b["status"] for b in cluster.emulator.list(BUCKETS, NS)}
    assert {statuses[b]["reason"] for b in lost} == {"orphaned"}
    assert {statuses[b]["previousOwner"] for b in lost} == {"w-a0", "w-a1"}
    event = cluster.moved_events()[0]
    assert event["involvedObject"]["kind"] == "MailishBucket" and event["type"] == "Normal"
    assert "orphaned" in event["message"] and "-> w-" in event["message"]


async def test_silent_worker_loses_its_buckets_within_grace(cluster: Cluster) -> None:
    workers = build(cluster, "ab", 2, buckets=40)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 40))
        before = cluster.epochs()
        lost = held_by(cluster.owners(), {"w-a0"})
        started = time.monotonic()
        cluster.silence("w-a0")  # the pod looks fine; only its Lease stops changing
        await eventually(lambda: balanced(cluster.loads(), workers - {"w-a0"}, 40))
        took = time.monotonic() - started
    assert moved(before, cluster.epochs()) == lost
    assert GRACE - 0.25 <= took <= GRACE + 2.0, took  # grace after its last *seen* renewal
    print(f"\nsilent worker: its {len(lost)} buckets reassigned {took:.2f}s after it went silent")


async def test_whole_zone_lost(cluster: Cluster) -> None:
    workers = build(cluster, "abc", 2, buckets=90)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 90))
        lost = held_by(cluster.owners(), {"w-a0", "w-a1"})
        for pod in ("w-a0", "w-a1"):  # the zone goes dark: no heartbeats, node unreachable
            cluster.silence(pod)
        cluster.set_node("node-a", ready=False, taints=("node.kubernetes.io/unreachable",))
        survivors = workers - {"w-a0", "w-a1"}
        await eventually(lambda: balanced(cluster.loads(), survivors, 90))
        assert len(lost) == 30
        zones = Counter(str(owner)[2] for owner in cluster.owners().values())
        assert zones.keys() == {"b", "c"} and abs(zones["b"] - zones["c"]) <= 2


async def test_rollout_drains_terminating_pods(cluster: Cluster) -> None:
    old = build(cluster, "ab", 2, buckets=40)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), old, 40))
        new: set[str] = set()
        for pod in sorted(old):  # one pod at a time: surge a new one, terminate an old one
            replacement = pod.replace("w-", "v-")
            cluster.worker(replacement, f"node-{pod[2]}")
            new.add(replacement)
            cluster.emulator.delete(PODS, NS, pod)  # terminating, still heartbeating
            await eventually(lambda pod=pod: pod not in cluster.loads())
            cluster.silence(pod)
            cluster.emulator.remove(PODS, NS, pod)
        await eventually(lambda: balanced(cluster.loads(), new, 40))
    assert not held_by(cluster.owners(), old)


async def test_replacement_pod_with_the_same_name_gets_new_epochs(cluster: Cluster) -> None:
    workers = build(cluster, "a", 2, buckets=20)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 20))
        before = cluster.epochs()
        mine = held_by(cluster.owners(), {"w-a0"})
        cluster.emulator.remove(PODS, NS, "w-a0")  # a StatefulSet recreates it at once
        uid = cluster.worker("w-a0", "node-a")
        await eventually(
            lambda: (
                all(cluster.epochs()[b] > before[b] for b in mine)
                and balanced(cluster.loads(), workers, 20)
            )
        )
    buckets = {b["spec"]["bucket"]: b["status"] for b in cluster.emulator.list(BUCKETS, NS)}
    assert {buckets[b]["ownerUid"] for b in held_by(cluster.owners(), {"w-a0"})} == {uid}


async def test_drain_annotation_and_paused_buckets(cluster: Cluster) -> None:
    workers = build(cluster, "ab", 1, buckets=20)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 20))
        frozen = min(held_by(cluster.owners(), {"w-a0"}))
        cluster.emulator.patch(BUCKETS, NS, f"mailish-{frozen}", {"spec": {"paused": True}})
        annotations = {"metadata": {"annotations": {"mailish.io/drain": "true"}}}
        cluster.emulator.patch(PODS, NS, "w-a0", annotations)
        await eventually(lambda: cluster.loads() == {"w-b0": 19, "w-a0": 1})
    assert cluster.owners()[frozen] == "w-a0"  # paused: frozen with its owner and epoch


async def test_canary_share_and_its_removal(cluster: Cluster) -> None:
    stable = build(cluster, "ab", 2, buckets=40, canaryShare=0.25, maxMovesPerCycle=100)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), stable, 40))
        cluster.worker("c-0", "node-a", track="canary")
        cluster.worker("c-1", "node-b", track="canary")
        await eventually(lambda: len(held_by(cluster.owners(), {"c-0", "c-1"})) == 10)
        loads = cluster.loads()
        assert {loads["c-0"], loads["c-1"]} == {5} and {loads[w] for w in stable} == {7, 8}
        reasons = Counter(b["status"]["reason"] for b in cluster.emulator.list(BUCKETS, NS))
        assert reasons["track"] == 10
        for pod in ("c-0", "c-1"):  # the canary is removed: drained like a rollout
            cluster.emulator.delete(PODS, NS, pod)
        await eventually(lambda: balanced(cluster.loads(), stable, 40))


async def test_scale_out_moves_the_minimum_in_capped_steps(cluster: Cluster) -> None:
    workers = build(cluster, "ab", 2, buckets=80, maxMovesPerCycle=5, resyncSeconds=0.2)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 80))
        before = cluster.epochs()
        for name, node in (
            ("w-a9", "node-a"),
            ("w-b9", "node-b"),
            ("w-c9", "node-a"),
            ("w-d9", "node-b"),
        ):
            cluster.worker(name, node)
        grown = workers | {"w-a9", "w-b9", "w-c9", "w-d9"}
        await eventually(lambda: balanced(cluster.loads(), grown, 80))
    assert len(moved(before, cluster.epochs())) == 40  # each newcomer takes exactly 10


async def test_a_concurrent_write_makes_the_operator_replan(cluster: Cluster) -> None:
    """A 409 on the status write is not an error: the operator re-plans and still converges."""
    workers = build(cluster, "a", 2, buckets=10)
    interfered: list[str] = []

    def interfere(method: str, path: str) -> int | None:
        if method == "PATCH" and path.endswith("/mailish-3/status") and not interfered:
            interfered.append(path)  # someone else writes first, bumping resourceVersion
            cluster.emulator.patch(BUCKETS, NS, "mailish-3", {"metadata": {"labels": {"x": "y"}}})
        return None

    cluster.emulator.faults.append(interfere)
    async with OperatorThread(cluster.emulator.api_url) as operator:
        await eventually(lambda: balanced(cluster.loads(), workers, 10))
        assert interfered
        # One successful write: epoch = floor (1, the highest epoch handed out) + 1. A second
        # move from the stale plan would have made it 3.
        assert cluster.epochs()[3] == 2
        assert sorted(cluster.epochs().values()) == [1] * 9 + [2]
        assert operator.context.tracker.refused == {NS: {}}


async def test_silence_of_every_lease_is_not_death(cluster: Cluster) -> None:
    """All Leases quiet at once looks like our own watch failing: nothing moves until one
    worker is heard again; then the ones still silent are stale and lose their buckets."""
    workers = build(cluster, "ab", 1, buckets=20)
    async with OperatorThread(cluster.emulator.api_url):
        await eventually(lambda: balanced(cluster.loads(), workers, 20))
        before = cluster.epochs()
        for pod in workers:
            cluster.silence(pod)
        await asyncio.sleep(GRACE * 2)
        assert cluster.epochs() == before
        cluster.alive.add("w-a0")
        await eventually(lambda: balanced(cluster.loads(), {"w-a0"}, 20))
