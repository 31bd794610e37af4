"""``KubeAssigner``: the worker's view of ``MailishBucket`` ownership, as lease snapshots.

It satisfies the worker's ``Assigner`` protocol structurally (this package must not import
``mailish.worker``): ``leases()`` yields the complete set of ``BucketLease`` this pod should
hold, every time that set changes. Two background tasks feed it:

- the Lease heartbeat (``leasing``), which keeps this pod eligible in the operator's eyes;
- a list-watch of the buckets in the namespace (``watching``); a bucket is ours when its
  ``status.owner`` and ``status.ownerUid`` are this pod's name and uid.

While the heartbeat has not succeeded for most of the lease duration the snapshot is empty
(self-fenced): the operator is about to move everything, and running on would only race the
successor until PostgreSQL rejects our writes. Nothing is yielded before the first bucket
list has arrived, so a restart never starts with a falsely empty or partial set.

The background tasks live exactly as long as the iteration: they are cancelled and awaited
when the consumer stops (cancellation or ``aclose``).

Coming back from self-fencing, the snapshot is built from the bucket mirror as it stands; if
the watch was cut as well, that may name buckets the operator has since moved until the
relist lands. That is safe by construction: claiming an old epoch in PostgreSQL either
fails (a successor claimed a newer one) or holds only until the successor claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from mailish.domain.buckets import BucketLease
from mailish.kube import resources
from mailish.kube.client import KubeClient
from mailish.kube.identity import WorkerIdentity
from mailish.kube.leasing import DEFAULT_TIMING, LeaseHeartbeat, LeaseTiming
from mailish.kube.watching import Mirror

log = logging.getLogger(__name__)


class KubeAssigner:
    def __init__(
        self,
        *,
        client: KubeClient,
        identity: WorkerIdentity,
        namespace: str | None = None,
        timing: LeaseTiming = DEFAULT_TIMING,
        label_selector: str | None = None,
        watch_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        namespace = namespace or identity.namespace
        if not namespace:
            raise ValueError("KubeAssigner needs a namespace (POD_NAMESPACE or namespace=)")
        self._identity = identity
        self._clock = clock
        self._changed = asyncio.Event()
        self.heartbeat = LeaseHeartbeat(
            client,
            identity,
            namespace=namespace,
            timing=timing,
            on_change=self._changed.set,
            clock=clock,
        )
        params: Mapping[str, str] = {"labelSelector": label_selector} if label_selector else {}
        self.buckets = Mirror(
            client,
            resources.bucket_path(namespace),
            on_change=self._changed.set,
            params=params,
            watch_timeout=watch_timeout,
        )

    def snapshot(self) -> frozenset[BucketLease]:
        """The leases this pod holds right now (empty while self-fenced)."""
        if self.heartbeat.fenced(self._clock()):
            return frozenset()
        owned = (
            resources.owned_lease(
                obj, pod_name=self._identity.pod_name, pod_uid=self._identity.pod_uid
            )
            for obj in self.buckets.objects.values()
        )
        return frozenset(lease for lease in owned if lease is not None)

    async def leases(self) -> AsyncIterator[frozenset[BucketLease]]:
        tasks = [
            asyncio.create_task(self.heartbeat.run(), name="kube-lease-heartbeat"),
            asyncio.create_task(self.buckets.run(), name="kube-bucket-watch"),
        ]
        for task in tasks:
            task.add_done_callback(lambda _: self._changed.set())
        last: frozenset[BucketLease] | None = None
        was_fenced: bool | None = None
        try:
            while True:
                self._changed.clear()
                for task in tasks:
                    if task.done():  # they only return by cancellation; anything else is a bug
                        task.result()
                        raise RuntimeError(f"{task.get_name()} stopped unexpectedly")
                fenced = self.heartbeat.fenced(self._clock())
                if self.heartbeat.last_renewed is not None:  # not before the first renewal
                    if was_fenced is not None and fenced != was_fenced:
                        log.warning("worker %s %s", self._identity.pod_name, _FENCING[fenced])
                    was_fenced = fenced
                current = self.snapshot()
                if self.buckets.synced and current != last:
                    last = current
                    yield current
                await self._wait(fenced)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait(self, fenced: bool) -> None:
        """Until something changed, or until the heartbeat's fence deadline passes."""
        deadline = None if fenced else self.heartbeat.fence_deadline()
        delay = None if deadline is None else max(0.0, deadline - self._clock()) + 0.01
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._changed.wait()


_FENCING = {
    True: "fenced itself: its Lease could not be renewed in time, dropping every bucket",
    False: "renewed its Lease again, taking its buckets back",
}
