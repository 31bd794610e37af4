"""Pure parts of the operator: facts from bodies, one planning cycle, the dirty tracker."""

from __future__ import annotations

import asyncio

import pytest

from mailish.operator import facts
from mailish.operator.facts import BucketRecord, LeaseFacts, NodeFacts, PodFacts, PoolSettings
from mailish.operator.planning import ClusterView, plan_cycle
from mailish.operator.tracking import Tracker


def pod(name: str, uid: str = "", **over: object) -> PodFacts:
    base = dict(
        name=name,
        uid=uid or f"uid-{name}",
        node="n1",
        track="stable",
        ready=True,
        terminating=False,
        drain=False,
    )
    return PodFacts(**{**base, **over})  # type: ignore[arg-type]


def record(bucket: int, owner: str | None = None, epoch: int = 0, name: str = "") -> BucketRecord:
    return BucketRecord(
        name or f"p-{bucket}",
        "p",
        f"u{bucket}",
        "1",
        bucket,
        False,
        owner,
        f"uid-{owner}" if owner else None,
        epoch,
    )


NODES = {"n1": NodeFacts(ready=True, taints=frozenset(), zone="a")}


def test_facts_from_bodies() -> None:
    body = {
        "metadata": {
            "name": "w1",
            "uid": "u1",
            "labels": {"track": "canary"},
            "annotations": {"mailish.io/drain": "True"},
            "deletionTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert facts.pod_facts(body) == PodFacts("w1", "u1", "n1", "canary", True, True, True)
    node = {
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"}},
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
    }
    assert facts.node_facts(node) == NodeFacts(
        False, frozenset({"node.kubernetes.io/unreachable"}), "z"
    )
    lease = {
        "metadata": {
            "name": "mailish-worker-w1",
            "ownerReferences": [{"kind": "Pod", "uid": "u1"}],
        },
        "spec": {"renewTime": "t1"},
    }
    assert facts.lease_facts(lease) == LeaseFacts("w1", "u1", "t1")
    assert facts.lease_facts({"metadata": {"name": "someone-else"}}) is None
    assert facts.bucket_record({"metadata": {"name": "x"}, "spec": {}}) is None
    assert PoolSettings.from_spec({"buckets": 4}) == PoolSettings(buckets=4)


def test_cycle_checks_the_lease_uid_and_reports_the_next_deadline() -> None:
    view = ClusterView(
        pods=[pod("w1"), pod("w2"), pod("w3")],
        nodes=NODES,
        leases={
            "w1": LeaseFacts("w1", "uid-w1", "t"),
            "w2": LeaseFacts("w2", "uid-old", "t"),
            "w3": LeaseFacts("w3", "uid-w3", "t"),
        },
        buckets=[record(0), record(1, "w2", 4), record(7), record(1, "w1", 9, name="p-dup")],
    )
    cycle = plan_cycle(
        view,
        PoolSettings(buckets=3, lease_grace=5.0),
        lease_seen={"w1": 100.0, "w2": 100.0, "w3": 97.0},
        now=101.0,
    )
    assert cycle.refused == {"w2": "lease_missing"}  # its Lease names a predecessor's uid
    assert {w.name for w in cycle.workers} == {"w1", "w3"}
    assert cycle.missing == (2,)  # bucket 7 is out of range, p-dup loses to p-1 by name
    assert cycle.next_check == 102.0  # w3's lease goes stale first
    assert {m.bucket for m in cycle.plan.moves} == {0, 1}
    assert cycle.plan.assignments[1].reason == "orphaned"
    assert cycle.plan.assignments[1].epoch == 5
    assert cycle.plan.assignments[0].epoch == 5  # a fresh bucket starts above the floor (4)
    assert cycle.unowned == 0 and cycle.highest_epoch == 5


def test_staleness_is_judged_only_while_lease_events_flow() -> None:
    view = ClusterView(
        pods=[pod("w1"), pod("w2")],
        nodes=NODES,
        leases={"w1": LeaseFacts("w1", "uid-w1", "t"), "w2": LeaseFacts("w2", "uid-w2", "t")},
        buckets=[record(0, "w1", 1), record(1, "w2", 1)],
    )
    settings = PoolSettings(buckets=2, lease_grace=4.0)
    seen = {"w1": 100.0, "w2": 103.0}
    flowing = plan_cycle(view, settings, lease_seen=seen, now=105.0, lease_heard=105.0)
    assert flowing.refused == {"w1": "lease_stale"} and flowing.next_check == 107.0
    quiet = plan_cycle(view, settings, lease_seen=seen, now=105.0, lease_heard=101.0)
    assert quiet.refused == {} and not quiet.plan.moves  # judged as of 101 + 2
    assert quiet.next_check == 107.0  # w1's deadline (104) passed: it waits for events


def test_no_workers_unassigns_and_counts_unowned() -> None:
    view = ClusterView(
        pods=[pod("w1", ready=False)],
        nodes=NODES,
        leases={},
        buckets=[record(0, "w1", 2), record(1)],
    )
    cycle = plan_cycle(view, PoolSettings(buckets=2), lease_seen={}, now=0.0)
    assert cycle.refused == {"w1": "not_ready"}
    assert cycle.unowned == 2 and cycle.next_check is None
    assert cycle.plan.assignments[0].reason == "no_workers"


async def test_tracker_marks_only_real_changes() -> None:
    clock = [0.0]
    tracker = Tracker(clock=lambda: clock[0])
    flag = tracker.flag("ns")
    assert flag.is_set()  # the first cycle always runs
    flag.clear()
    tracker.noticed("pod", "ns", "w1", pod("w1"))
    assert flag.is_set()
    flag.clear()
    tracker.noticed("pod", "ns", "w1", pod("w1"))  # same facts: a status refresh
    assert not flag.is_set()
    tracker.lease_event("ns", LeaseFacts("w1", "u", "t1"), deleted=False)  # first sighting
    assert flag.is_set()
    flag.clear()
    clock[0] = 1.0
    tracker.lease_event("ns", LeaseFacts("w1", "u", "t2"), deleted=False)  # eligible: renewal
    assert not flag.is_set() and tracker.observers["ns"].seen_at("w1") == 1.0
    tracker.refused["ns"] = {"w1": "lease_stale"}
    tracker.lease_event("ns", LeaseFacts("w1", "u", "t3"), deleted=False)  # comes back
    assert flag.is_set()
    flag.clear()
    tracker.wrote("42")
    tracker.bucket_event(
        "ns", BucketRecord("p-0", "p", "u", "42", 0, False, "w1", "u", 1), deleted=False
    )
    assert not flag.is_set()  # our own write coming back
    tracker.noticed("node", "", "n1", NODES["n1"])
    assert flag.is_set()  # nodes mark every namespace
    await asyncio.sleep(0)


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE"])
def test_drain_annotation_values(value: str) -> None:
    body = {"metadata": {"annotations": {"mailish.io/drain": value}}}
    assert facts.pod_facts(body).drain
