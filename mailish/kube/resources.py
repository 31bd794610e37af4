"""Names, labels and object shapes that the worker and the operator must agree on.

Why one module: the operator reads exactly the fields the worker writes (its Lease) and the
worker reads exactly the fields the operator writes (``MailishBucket.status``). Keeping both
halves of every contract here means a rename cannot reach only one side. Everything is plain
data in, plain data out; no I/O.

The Lease a worker renews is ``mailish-worker-<pod>`` with ``holderIdentity`` = the pod name
and an ownerReference to the pod: the reference's ``uid`` is how the operator tells a live
pod's Lease from one left by a deleted pod of the same name (a StatefulSet restart), and it
lets the garbage collector delete the Lease with its pod.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import BucketNo, Epoch

GROUP: Final = "mailish.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
BUCKETS: Final = "mailishbuckets"
BUCKET_KIND: Final = "MailishBucket"
POOLS: Final = "mailishpools"
POOL_KIND: Final = "MailishPool"

COMPONENT_LABEL: Final = "app.kubernetes.io/component"
WORKER_COMPONENT: Final = "worker"
LEASE_COMPONENT: Final = "worker-lease"
POOL_LABEL: Final = f"{GROUP}/pool"
TRACK_LABEL: Final = "track"
DRAIN_ANNOTATION: Final = f"{GROUP}/drain"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
LEASE_PREFIX: Final = "mailish-worker-"

WORKER_SELECTOR: Final = f"{COMPONENT_LABEL}={WORKER_COMPONENT}"
LEASE_SELECTOR: Final = f"{COMPONENT_LABEL}={LEASE_COMPONENT}"

Body = Mapping[str, Any]


def bucket_path(namespace: str, name: str | None = None, *, status: bool = False) -> str:
    base = f"/apis/{API_VERSION}/namespaces/{namespace}/{BUCKETS}"
    if name is None:
        return base
    return f"{base}/{name}/status" if status else f"{base}/{name}"


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return base if name is None else f"{base}/{name}"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def bucket_name(pool: str, bucket: int) -> str:
    return f"{pool}-{bucket}"


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes ``MicroTime``: RFC 3339 in UTC with exactly six fractional digits."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_bucket(*, namespace: str, pool: str, bucket: int) -> dict[str, Any]:
    """A bucket object as the operator creates it; status comes later, via ``/status``."""
    return {
        "apiVersion": API_VERSION,
        "kind": BUCKET_KIND,
        "metadata": {
            "name": bucket_name(pool, bucket),
            "namespace": namespace,
            "labels": {POOL_LABEL: pool, "app.kubernetes.io/name": "mailish"},
        },
        "spec": {"bucket": bucket, "paused": False},
    }


@dataclass(frozen=True, slots=True)
class LeaseSpec:
    """What one renewal writes: who holds the Lease, for how long, and since when."""

    pod_name: str
    pod_uid: str
    duration_seconds: int

    def body(self, *, namespace: str, now: datetime.datetime) -> dict[str, Any]:
        stamp = micro_time(now)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": LEASE_PREFIX + self.pod_name,
                "namespace": namespace,
                "labels": {COMPONENT_LABEL: LEASE_COMPONENT, "app.kubernetes.io/name": "mailish"},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": self.pod_name,
                        "uid": self.pod_uid,
                    }
                ],
            },
            "spec": {
                "holderIdentity": self.pod_name,
                "leaseDurationSeconds": self.duration_seconds,
                "renewTime": stamp,
            },
        }


def lease_pod_uid(lease: Body) -> str | None:
    """The uid of the pod a worker Lease belongs to (its Pod ownerReference), if any."""
    for ref in lease.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("kind") == "Pod" and ref.get("uid"):
            return str(ref["uid"])
    return None


def lease_pod_name(lease_name: str) -> str | None:
    return lease_name.removeprefix(LEASE_PREFIX) if lease_name.startswith(LEASE_PREFIX) else None


def owned_lease(bucket: Body, *, pod_name: str, pod_uid: str) -> BucketLease | None:
    """The lease ``bucket`` grants to this pod, or None if its status names someone else.

    Both the name and the uid must match: a replacement pod that reuses the name gets nothing
    until the operator assigns the bucket to its uid (with a new epoch).
    """
    status = bucket.get("status") or {}
    spec = bucket.get("spec") or {}
    epoch = status.get("epoch")
    number = spec.get("bucket")
    if status.get("owner") != pod_name or status.get("ownerUid") != pod_uid:
        return None
    if not isinstance(epoch, int) or not isinstance(number, int) or epoch < 1 or number < 0:
        return None
    return BucketLease(bucket=BucketNo(number), owner=pod_name, epoch=Epoch(epoch))
