"""What kopf's event handlers tell the reconcile loops between cycles: dirty marks and sightings.

Why a dirty mark and not a plan per event: a zone outage or a rollout produces a burst of pod,
node and Lease events; one plan after the burst moves each bucket once, while a plan per event
would move some twice. Marks are per namespace (one pool per namespace); a node change marks
every namespace, since any pool may run pods there.

Only real changes mark: handlers pass the small facts they extracted, and an event whose facts
equal the last ones seen (a pod status refresh, a Lease renewal of an eligible worker) marks
nothing. Renewals are still *observed* — that is what keeps a worker eligible — but they only
mark the namespace when they can make a worker eligible again (its Lease was missing or stale).

The status writes of the operator itself come back as bucket events; their resourceVersions
are remembered so they do not trigger another (empty) plan.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Final

from mailish.domain.eligibility import IneligibleReason, LeaseObserver
from mailish.operator.facts import BucketRecord, LeaseFacts

LEASE_REASONS: Final[frozenset[IneligibleReason]] = frozenset({"lease_missing", "lease_stale"})
_MAX_OWN_VERSIONS = 65536


class Tracker:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.observers: defaultdict[str, LeaseObserver] = defaultdict(LeaseObserver)
        self.refused: dict[str, dict[str, IneligibleReason]] = {}
        self.lease_heard: dict[str, float] = {}  # last Lease event of any worker, per namespace
        self._flags: dict[str, asyncio.Event] = {}
        self._seen: dict[tuple[str, str, str], object] = {}
        self._own_versions: set[str] = set()

    def flag(self, namespace: str) -> asyncio.Event:
        """The namespace's dirty mark; a new one starts set, so a first cycle always runs."""
        flag = self._flags.get(namespace)
        if flag is None:
            flag = self._flags[namespace] = asyncio.Event()
            flag.set()
        return flag

    def mark(self, namespace: str | None) -> None:
        """Mark one namespace dirty, or every namespace for ``None``."""
        if namespace is None:
            for flag in self._flags.values():
                flag.set()
        else:
            self.flag(namespace).set()

    def noticed(self, kind: str, namespace: str, name: str, facts: object | None) -> None:
        """A pod or node event: mark if its facts changed (``None``: it is gone)."""
        key = (kind, namespace, name)
        if facts is None:
            self._seen.pop(key, None)
        elif self._seen.get(key) == facts:
            return
        else:
            self._seen[key] = facts
        self.mark(namespace if kind != "node" else None)

    def lease_event(self, namespace: str, facts: LeaseFacts | None, *, deleted: bool) -> None:
        if facts is None:
            return
        self.lease_heard[namespace] = self.clock()
        observer = self.observers[namespace]
        if deleted:
            observer.forget(facts.pod_name)
            self.mark(namespace)
            return
        first = observer.seen_at(facts.pod_name) is None
        renewed = observer.observe(facts.pod_name, facts.renew_time, self.clock())
        refused = self.refused.get(namespace, {}).get(facts.pod_name)
        if first or (renewed and refused in LEASE_REASONS):
            self.mark(namespace)

    def bucket_event(self, namespace: str, record: BucketRecord | None, *, deleted: bool) -> None:
        if record is None:
            return
        if not deleted and record.resource_version in self._own_versions:
            self._own_versions.discard(record.resource_version)
            self._seen[("bucket", namespace, record.name)] = _comparable(record)
            return
        self.noticed("bucket", namespace, record.name, None if deleted else _comparable(record))

    def wrote(self, resource_version: str) -> None:
        """Remember a resourceVersion our own status write produced."""
        if len(self._own_versions) >= _MAX_OWN_VERSIONS:
            self._own_versions.clear()  # events were lost (batched away); start afresh
        self._own_versions.add(resource_version)


def _comparable(record: BucketRecord) -> tuple[object, ...]:
    return (record.bucket, record.pool, record.paused, record.owner, record.owner_uid, record.epoch)
