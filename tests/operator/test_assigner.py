"""``KubeAssigner``: the worker's side, against the emulator (and with the real operator).

A worker must see exactly the buckets whose status names its pod name *and* uid, follow
moves as they happen (also across a watch that expired), keep its Lease renewed with an
ownerReference to its pod, and fence itself (an empty snapshot) when it cannot renew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import BucketNo, Epoch
from mailish.kube import resources
from mailish.kube.assigning import KubeAssigner
from mailish.kube.client import KubeClient
from mailish.kube.connecting import KubeConnection
from mailish.kube.identity import WorkerIdentity
from mailish.kube.leasing import LeaseTiming
from tests.harness.kube_emulator import KubeEmulator
from tests.operator.cluster import BUCKETS, LEASES, NS, Cluster, OperatorThread, eventually

pytestmark = pytest.mark.timeout(60)
FAST = LeaseTiming(duration=1.0, renew_every=0.15, fence_after=0.6)


class Follower:
    """Consumes ``leases()`` in a task, keeping the latest snapshot."""

    def __init__(self, assigner: KubeAssigner) -> None:
        self.assigner = assigner
        self.latest: frozenset[BucketLease] | None = None
        self.count = 0
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for snapshot in self.assigner.leases():
            self.latest = snapshot
            self.count += 1

    def buckets(self) -> set[int]:
        return {lease.bucket for lease in self.latest or ()}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def client(emulator: KubeEmulator) -> AsyncIterator[KubeClient]:
    client = KubeClient(KubeConnection(server=emulator.api_url))
    yield client
    await client.aclose()


def put_bucket(emulator: KubeEmulator, number: int, status: dict[str, object] | None) -> None:
    name = resources.bucket_name("mailish", number)
    try:
        emulator.get(BUCKETS, NS, name)
    except Exception:
        emulator.create(BUCKETS, resources.new_bucket(namespace=NS, pool="mailish", bucket=number))
    if status is not None:
        emulator.patch(BUCKETS, NS, name, {"status": status}, status=True)


def lease(number: int, epoch: int) -> BucketLease:
    return BucketLease(BucketNo(number), "w1", Epoch(epoch))


async def test_worker_sees_exactly_its_buckets_and_follows_moves(
    emulator: KubeEmulator, client: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailish.kube")
    me = WorkerIdentity("w1", "uid-1", "node-a", NS)
    put_bucket(emulator, 0, {"owner": "w1", "ownerUid": "uid-1", "epoch": 3})
    put_bucket(emulator, 1, {"owner": "w1", "ownerUid": "uid-old", "epoch": 2})  # predecessor
    put_bucket(emulator, 2, {"owner": "w2", "ownerUid": "uid-2", "epoch": 1})
    put_bucket(emulator, 3, None)  # never assigned
    assigner = KubeAssigner(client=client, identity=me, timing=FAST, watch_timeout=1.0)
    follower = Follower(assigner)
    try:
        await eventually(lambda: follower.latest == {lease(0, 3)})
        put_bucket(emulator, 2, {"owner": "w1", "ownerUid": "uid-1", "epoch": 2})
        await eventually(lambda: follower.latest == {lease(0, 3), lease(2, 2)})
        put_bucket(emulator, 0, {"owner": "w2", "ownerUid": "uid-2", "epoch": 4})
        await eventually(lambda: follower.latest == {lease(2, 2)})

        emulator.create("v1/events", {"metadata": {"name": "unrelated"}}, NS)
        emulator.compact()  # the watch resumes after its 1 s timeout, gets 410, relists
        await asyncio.sleep(1.2)
        put_bucket(emulator, 3, {"owner": "w1", "ownerUid": "uid-1", "epoch": 1})
        await eventually(lambda: follower.latest == {lease(2, 2), lease(3, 1)})
        assert "history expired, relisting" in caplog.text

        body = emulator.get(LEASES, NS, "mailish-worker-w1")
        assert body["spec"]["holderIdentity"] == "w1"
        assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert body["metadata"]["labels"][resources.COMPONENT_LABEL] == "worker-lease"
        renewed = body["spec"]["renewTime"]
        await eventually(
            lambda: emulator.get(LEASES, NS, "mailish-worker-w1")["spec"]["renewTime"] != renewed
        )
    finally:
        await follower.stop()


async def test_worker_fences_itself_when_its_lease_cannot_be_renewed(
    emulator: KubeEmulator, client: KubeClient
) -> None:
    me = WorkerIdentity("w1", "uid-1", "node-a", NS)
    put_bucket(emulator, 0, {"owner": "w1", "ownerUid": "uid-1", "epoch": 1})
    follower = Follower(KubeAssigner(client=client, identity=me, timing=FAST))
    try:
        await eventually(lambda: follower.latest == {lease(0, 1)})
        blocked = time.monotonic()
        emulator.faults.append(lambda method, path: 503 if "/leases" in path else None)
        await eventually(lambda: follower.latest == frozenset())
        fenced_after = time.monotonic() - blocked
        assert fenced_after <= FAST.fence_delay + 0.5, fenced_after
        emulator.faults.clear()
        await eventually(lambda: follower.latest == {lease(0, 1)})
    finally:
        await follower.stop()
    print(f"\nself-fenced {fenced_after:.2f}s after Lease renewals started failing")


async def test_workers_and_operator_end_to_end(emulator: KubeEmulator) -> None:
    """Three real assigners, the real operator: disjoint, complete, and a death moves fast."""
    async with Cluster(emulator) as cluster:
        cluster.node("node-a", "a")
        cluster.node("node-b", "b")
        clients, followers = [], {}
        for name, node in (("w1", "node-a"), ("w2", "node-b"), ("w3", "node-b")):
            uid = cluster.worker(name, node, lease=False)  # the assigner renews its own
            client = KubeClient(KubeConnection(server=emulator.api_url))
            clients.append(client)
            timing = LeaseTiming(duration=2.0, renew_every=0.3)
            identity = WorkerIdentity(name, uid, node, NS)
            followers[name] = Follower(
                KubeAssigner(client=client, identity=identity, timing=timing)
            )
        cluster.pool(30, leaseGraceSeconds=2.0, resyncSeconds=1)
        try:
            async with OperatorThread(emulator.api_url):

                def split(names: list[str]) -> bool:
                    sets = [followers[n].buckets() for n in names]
                    return sum(map(len, sets)) == 30 and set().union(*sets) == set(range(30))

                await eventually(lambda: split(["w1", "w2", "w3"]))
                assert {len(f.buckets()) for f in followers.values()} == {10}
                await followers["w1"].stop()  # the worker dies: its Lease stops changing
                died = time.monotonic()
                await eventually(lambda: split(["w2", "w3"]), timeout=15)
                took = time.monotonic() - died
        finally:
            for follower in followers.values():
                await follower.stop()
            for client in clients:
                await client.aclose()
    assert 1.5 <= took <= 5.0, took  # 2 s after the last renewal the operator saw
    print(f"\nworker death (2 s lease grace) -> its 10 buckets running elsewhere: {took:.2f}s")
