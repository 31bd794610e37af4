"""The emulator is strict where the operator depends on it; these pin that behaviour down.

Each check is one the lenient kmock store would pass wrongly: conflicts, subresources,
selectors, watch resumption and expiry, discovery.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mailish.kube import resources
from mailish.kube.client import Conflict, Invalid, KubeClient, NotFound
from mailish.kube.connecting import KubeConnection
from tests.harness.kube_emulator import KubeEmulator
from tests.operator.cluster import BUCKETS, NS

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def client(emulator: KubeEmulator) -> KubeClient:
    client = KubeClient(KubeConnection(server=emulator.api_url))
    yield client
    await client.aclose()


def bucket(number: int, **labels: str) -> dict[str, object]:
    body = resources.new_bucket(namespace=NS, pool="p", bucket=number)
    body["metadata"]["labels"].update(labels)  # type: ignore[index]
    return body


async def test_discovery_serves_namespaces_and_the_crd_group(client: KubeClient) -> None:
    core = await client.get("/api/v1")
    assert {"namespaces", "pods", "pods/status", "nodes", "events"} <= {
        r["name"] for r in core["resources"]
    }
    group = await client.get(f"/apis/{resources.API_VERSION}")
    names = {r["name"]: r for r in group["resources"]}
    assert names["mailishbuckets"]["namespaced"] is True
    assert "mailishbuckets/status" in names
    leases = await client.get("/apis/coordination.k8s.io/v1")
    assert "leases" in {r["name"] for r in leases["resources"]}


async def test_writes_assign_identity_and_reject_stale_versions(client: KubeClient) -> None:
    path = resources.bucket_path(NS)
    created = await client.create(path, bucket(1))
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    with pytest.raises(Conflict):
        await client.create(path, bucket(1))
    status_path = resources.bucket_path(NS, meta["name"], status=True)
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"epoch": 1}}
    updated = await client.merge_patch(status_path, patch)
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    with pytest.raises(Conflict):
        await client.merge_patch(status_path, {**patch, "status": {"epoch": 2}})
    with pytest.raises(NotFound):
        await client.merge_patch(resources.bucket_path(NS, "nope", status=True), patch)


async def test_status_is_a_separate_subresource(client: KubeClient) -> None:
    created = await client.create(resources.bucket_path(NS), {**bucket(2), "status": {"epoch": 9}})
    name = created["metadata"]["name"]
    assert "status" not in created  # dropped on create
    main = await client.merge_patch(
        resources.bucket_path(NS, name), {"spec": {"paused": True}, "status": {"epoch": 5}}
    )
    assert main["spec"]["paused"] is True and "status" not in main
    sub = await client.merge_patch(
        resources.bucket_path(NS, name, status=True),
        {"spec": {"paused": False}, "status": {"epoch": 5, "owner": "w"}},
    )
    assert sub["spec"]["paused"] is True and sub["status"] == {"epoch": 5, "owner": "w"}
    assert sub["metadata"]["generation"] == main["metadata"]["generation"] == 2


async def test_schema_violations_are_422(client: KubeClient) -> None:
    with pytest.raises(Invalid):
        await client.create(resources.bucket_path(NS), {**bucket(3), "spec": {"bucket": -1}})
    created = await client.create(resources.bucket_path(NS), bucket(3))
    with pytest.raises(Invalid):
        await client.merge_patch(
            resources.bucket_path(NS, created["metadata"]["name"], status=True),
            {"status": {"reason": "whim"}},
        )


async def test_label_selectors_filter_lists_and_watches(
    client: KubeClient, emulator: KubeEmulator
) -> None:
    path = resources.bucket_path(NS)
    for number, tier in ((1, "a"), (2, "b"), (3, "c")):
        await client.create(path, bucket(number, tier=tier))
    for text, expected in (
        ("tier=a", {1}),
        ("tier!=a", {2, 3}),
        ("tier in (a, c)", {1, 3}),
        ("tier notin (a,c),mailish.io/pool=p", {2}),
        ("!tier", set()),
        ("tier", {1, 2, 3}),
    ):
        listing = await client.get(path, params={"labelSelector": text})
        assert {i["spec"]["bucket"] for i in listing["items"]} == expected, text
    version = listing["metadata"]["resourceVersion"]
    events: list[tuple[str, int]] = []

    async def follow() -> None:
        stream = client.watch(
            path, resource_version=version, params={"labelSelector": "tier=a"}, server_timeout=5
        )
        async for event in stream:
            events.append((event["type"], event["object"]["spec"]["bucket"]))
            if len(events) == 3:
                return

    watcher = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    emulator.patch(BUCKETS, NS, "p-2", {"metadata": {"labels": {"tier": "a"}}})  # enters
    emulator.patch(BUCKETS, NS, "p-3", {"spec": {"paused": True}})  # never matches
    emulator.patch(BUCKETS, NS, "p-1", {"metadata": {"labels": {"tier": "z"}}})  # leaves
    emulator.delete(BUCKETS, NS, "p-2")
    await asyncio.wait_for(watcher, 5)
    assert events == [("ADDED", 2), ("DELETED", 1), ("DELETED", 2)]


async def test_watches_resume_from_a_version_and_expire(
    client: KubeClient, emulator: KubeEmulator
) -> None:
    path = resources.bucket_path(NS)
    first = await client.create(path, bucket(1))
    await client.create(path, bucket(2))
    since = first["metadata"]["resourceVersion"]
    stream = client.watch(path, resource_version=since, params={}, server_timeout=1)
    seen = [(e["type"], e["object"]["spec"]["bucket"]) async for e in stream]
    assert seen == [("ADDED", 2)]  # only what came after `since`, then the server timeout
    emulator.compact()
    expired = client.watch(path, resource_version=since, params={}, server_timeout=1)
    async with contextlib.aclosing(expired):
        events = [event async for event in expired]
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


async def test_pods_terminate_gracefully_and_finalizers_hold_deletion(
    emulator: KubeEmulator,
) -> None:
    emulator.create("v1/pods", {"metadata": {"name": "w"}}, NS)
    emulator.delete("v1/pods", NS, "w")
    assert emulator.get("v1/pods", NS, "w")["metadata"]["deletionTimestamp"]
    emulator.remove("v1/pods", NS, "w")
    created = emulator.create(
        BUCKETS, {**bucket(4), "metadata": {"name": "held", "finalizers": ["x/y"]}}, NS
    )
    emulator.delete(BUCKETS, NS, "held")
    assert emulator.get(BUCKETS, NS, "held")["metadata"]["deletionTimestamp"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    with pytest.raises(Exception, match="422"):
        emulator.patch(BUCKETS, NS, "held", ops, content_type="application/json-patch+json")
    ops[0]["value"] = emulator.get(BUCKETS, NS, "held")["metadata"]["resourceVersion"]
    emulator.patch(BUCKETS, NS, "held", ops, content_type="application/json-patch+json")
    assert not emulator.list(BUCKETS, NS)
    assert created["metadata"]["uid"]
