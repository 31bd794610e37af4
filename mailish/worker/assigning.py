"""Where a worker learns which buckets it owns.

An ``Assigner`` yields the complete set of leases this worker should hold, every time it
changes. In Kubernetes that is the MailishBucket watch (``mailish.kube``); locally it is the
``StaticAssigner``: every bucket, one epoch, forever. The static epoch is one above the newest
epoch ever claimed, so a second ``mailish up`` on the same database takes over and fences the
first instead of the two writing side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from mailish.domain.buckets import BucketLease
from mailish.domain.ids import BucketNo, Epoch


class Assigner(Protocol):
    def leases(self) -> AsyncIterator[frozenset[BucketLease]]: ...


class StaticAssigner:
    def __init__(self, *, buckets: int, owner: str, epoch: Epoch) -> None:
        self._snapshot = frozenset(
            BucketLease(bucket=BucketNo(b), owner=owner, epoch=epoch) for b in range(buckets)
        )

    async def leases(self) -> AsyncIterator[frozenset[BucketLease]]:
        yield self._snapshot
        await asyncio.Event().wait()  # ownership never changes locally
