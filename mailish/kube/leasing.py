"""The worker's heartbeat: renew ``coordination.k8s.io/v1`` Lease ``mailish-worker-<pod>``.

Only this worker writes its Lease, so a renewal is a plain merge patch (no precondition); a
missing Lease is created. The operator never trusts ``renewTime`` against its own clock, it
only notices that the value *changed* (see ``mailish.domain.eligibility``), so worker clock
skew cannot keep a dead worker alive.

Self-fencing: ``last_renewed`` is the monotonic time a successful renewal was *sent* (the
server cannot have seen it earlier). When that is more than ``fence_after`` seconds ago
(default three quarters of the duration) the worker must assume the operator is about to
move its buckets, and ``fenced()`` turns true. The margin to the operator's grace is what
lets a cut-off worker stop before its successor starts; PostgreSQL epoch fencing keeps data
safe even when it does not.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailish.domain.errors import MailishError
from mailish.kube import resources
from mailish.kube.client import KubeClient, NotFound
from mailish.kube.identity import WorkerIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    duration: float = 15.0
    renew_every: float | None = None  # default: a third of the duration
    fence_after: float | None = None  # default: three quarters of the duration

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError(f"lease duration must be > 0, not {self.duration}")
        if self.fence_delay <= self.renew_interval:
            raise ValueError("fence_after must leave room for at least one renewal")

    @property
    def renew_interval(self) -> float:
        return self.renew_every if self.renew_every is not None else self.duration / 3

    @property
    def fence_delay(self) -> float:
        return self.fence_after if self.fence_after is not None else self.duration * 0.75


DEFAULT_TIMING = LeaseTiming()


class LeaseHeartbeat:
    def __init__(
        self,
        client: KubeClient,
        identity: WorkerIdentity,
        *,
        namespace: str,
        timing: LeaseTiming = DEFAULT_TIMING,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._timing = timing
        self._on_change = on_change
        self._clock = clock
        self._spec = resources.LeaseSpec(
            pod_name=identity.pod_name,
            pod_uid=identity.pod_uid,
            duration_seconds=max(1, round(timing.duration)),
        )
        self._path = resources.lease_path(namespace, identity.lease_name)
        self.last_renewed: float | None = None

    def fenced(self, now: float | None = None) -> bool:
        if self.last_renewed is None:
            return True
        now = self._clock() if now is None else now
        return now - self.last_renewed > self._timing.fence_delay

    def fence_deadline(self) -> float | None:
        """Monotonic time at which ``fenced()`` turns true unless renewed; None if it is."""
        if self.last_renewed is None:
            return None
        return self.last_renewed + self._timing.fence_delay

    async def run(self) -> None:
        """Renew forever (returns only by cancellation); failures are logged, never raised."""
        failing = False
        while True:
            sent = self._clock()
            try:
                async with asyncio.timeout(self._timing.renew_interval):
                    await self.renew_once()
            except (MailishError, TimeoutError, ValueError) as exc:
                if not failing:
                    log.warning("lease %s: renewal failed: %s", self._path, exc)
                failing = True
            else:
                if failing:
                    log.info("lease %s: renewed again", self._path)
                failing = False
                self.last_renewed = sent
                self._on_change()
            pause = self._timing.renew_interval - (self._clock() - sent)
            await asyncio.sleep(max(0.05, pause))

    async def renew_once(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        body = self._spec.body(namespace=self._namespace, now=now)
        try:
            await self._client.merge_patch(self._path, body)
        except NotFound:
            body["spec"]["acquireTime"] = body["spec"]["renewTime"]
            await self._client.create(resources.lease_path(self._namespace), body)
