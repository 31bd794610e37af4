"""The reconcile loop of one pool: wait for a dirty mark or a deadline, plan, write.

Ordering and concurrency:

- One loop per pool, so plans never race each other; kopf's handlers only mark and observe.
- It wakes on a dirty mark (after ``debounce``, to take a burst in one plan), at the moment
  the freshest eligible Lease would go stale (a silent worker sends no event), and every
  ``resync`` seconds regardless.
- Every status write carries the resourceVersion the plan was based on. ``409 Conflict``
  means someone (another operator replica, a human) changed the bucket after we looked: the
  write is dropped and the pool re-planned from fresh facts. So two operators can never both
  move a bucket from the same epoch.
- kopf's index may still show a bucket as it was before our own write; ``_pending`` overlays
  what we wrote until the index catches up, so the next plan does not move it again.
- Every move from one owner to another (or to none) is recorded as a ``BucketMoved`` Event on
  the bucket; first assignments are not, or bootstrapping a pool would post one per bucket.
- ``highestEpoch`` in the pool status is a floor for buckets that have no status yet: a bucket
  object deleted and recreated starts above every epoch the pool has handed out, so its
  claims in PostgreSQL are not stuck behind an older, higher epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mailish.domain.assignment import Move
from mailish.domain.errors import MailishError
from mailish.kube import resources
from mailish.kube.client import Conflict, KubeClient, NotFound
from mailish.operator import metrics
from mailish.operator.facts import BucketRecord, PoolSettings
from mailish.operator.planning import ClusterView, Cycle, plan_cycle
from mailish.operator.tracking import Tracker

log = logging.getLogger(__name__)

PostEvent = Callable[[dict[str, Any], str, str], None]
_SHOWN_MOVES = 20


class Reconciler:
    def __init__(
        self,
        *,
        tracker: Tracker,
        client: KubeClient,
        namespace: str,
        pool: str,
        post_event: PostEvent,
        debounce: float = 0.1,
        retry_delay: float = 1.0,
        concurrency: int = 16,
    ) -> None:
        self._tracker = tracker
        self._client = client
        self._namespace = namespace
        self._pool = pool
        self._label = f"{namespace}/{pool}"
        self._post_event = post_event
        self._debounce = debounce
        self._retry_delay = retry_delay
        self._limit = asyncio.Semaphore(concurrency)
        self._pending: dict[str, tuple[str, BucketRecord]] = {}
        self._summary: dict[str, int] | None = None
        self._last_refused: dict[str, str] | None = None
        self._epoch_floor = 0
        self._failed = False

    async def run(
        self,
        *,
        view: Callable[[], ClusterView],
        settings: Callable[[], PoolSettings],
        status: Mapping[str, Any],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Reconcile until cancelled (kopf cancels the daemon when the pool goes away)."""
        self._epoch_floor = int(status.get("highestEpoch") or 0)
        self._summary = {k: v for k, v in status.items() if isinstance(v, int)} or None
        flag = self._tracker.flag(self._namespace)
        warned = False
        while True:
            flag.clear()
            config = settings()
            timeout = config.resync
            if not active():
                if not warned:
                    log.warning("pool %s: another pool owns this namespace; idle", self._label)
                warned = True
            else:
                warned = False
                cycle = await self.cycle(view(), config)
                if cycle.next_check is not None:
                    timeout = min(timeout, cycle.next_check - self._tracker.clock() + 0.01)
            if self._failed:
                self._failed = False
                await asyncio.sleep(self._retry_delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout)):
                    await flag.wait()
                    await asyncio.sleep(self._debounce)

    async def cycle(self, view: ClusterView, config: PoolSettings) -> Cycle:
        now = self._tracker.clock()
        observer = self._tracker.observers[self._namespace]
        for name, lease in view.leases.items():  # first sightings, e.g. after a restart
            observer.observe(name, lease.renew_time, now)
        view = dataclasses.replace(view, buckets=self._overlay(view.buckets))
        cycle = plan_cycle(
            view,
            config,
            lease_seen={pod.name: observer.seen_at(pod.name) for pod in view.pods},
            now=now,
            lease_heard=self._tracker.lease_heard.get(self._namespace),
            epoch_floor=self._epoch_floor,
        )
        self._tracker.refused[self._namespace] = cycle.refused
        metrics.record_plan(
            self._label,
            eligible=len(cycle.workers),
            refused=cycle.refused,
            unowned=cycle.unowned,
            seconds=self._tracker.clock() - now,
        )
        self._log(cycle, total=len(view.pods))
        async with asyncio.TaskGroup() as group:
            for bucket in cycle.missing:
                group.create_task(self._create(bucket))
            for move in cycle.plan.moves:
                group.create_task(self._write(move, cycle))
        self._epoch_floor = max(self._epoch_floor, cycle.highest_epoch)
        await self._write_summary(cycle)
        return cycle

    def _overlay(self, records: Sequence[BucketRecord]) -> list[BucketRecord]:
        current: list[BucketRecord] = []
        for record in records:
            pending = self._pending.get(record.name)
            if pending is not None and record.resource_version == pending[0]:
                current.append(pending[1])  # the index has not seen our write yet
                continue
            self._pending.pop(record.name, None)
            current.append(record)
        return current

    async def _create(self, bucket: int) -> None:
        body = resources.new_bucket(namespace=self._namespace, pool=self._pool, bucket=bucket)
        async with self._limit:
            try:
                await self._client.create(resources.bucket_path(self._namespace), body)
            except Conflict:
                pass  # created meanwhile; its event will mark us
            except MailishError as exc:
                self._fail(f"creating bucket {bucket}", exc)

    async def _write(self, move: Move, cycle: Cycle) -> None:
        record = cycle.records[move.bucket]
        target = cycle.plan.assignments[move.bucket]
        patch = {
            "metadata": {"resourceVersion": record.resource_version},
            "status": {
                "owner": target.owner,
                "ownerUid": target.owner_uid,
                "epoch": target.epoch,
                "reason": target.reason,
                "previousOwner": move.from_owner,
                "assignedAt": resources.micro_time(datetime.datetime.now(datetime.UTC)),
            },
        }
        path = resources.bucket_path(self._namespace, record.name, status=True)
        async with self._limit:
            try:
                body = await self._client.merge_patch(path, patch)
            except (Conflict, NotFound) as exc:
                metrics.status_conflicts.labels(pool=self._label).inc()
                log.info("bucket %s changed under the plan (%s); re-planning", record.name, exc)
                self._tracker.mark(self._namespace)
                return
            except MailishError as exc:
                self._fail(f"moving bucket {record.name}", exc)
                return
        version = str(body.get("metadata", {}).get("resourceVersion", ""))
        self._tracker.wrote(version)
        written = dataclasses.replace(
            record,
            resource_version=version,
            owner=target.owner,
            owner_uid=target.owner_uid,
            epoch=target.epoch,
        )
        self._pending[record.name] = (record.resource_version, written)
        metrics.record_moves(self._label, [move.reason])
        if move.from_owner is None:
            return  # a first assignment is no move; a bootstrap would post one per bucket
        ref = {
            "apiVersion": resources.API_VERSION,
            "kind": resources.BUCKET_KIND,
            "metadata": {"name": record.name, "namespace": self._namespace, "uid": record.uid},
        }
        message = (
            f"bucket {move.bucket}: {move.from_owner or '-'} -> {move.to_owner or '-'} "
            f"(epoch {move.new_epoch}, {move.reason})"
        )
        self._post_event(ref, "BucketMoved", message)

    async def _write_summary(self, cycle: Cycle) -> None:
        summary = {
            "buckets": len(cycle.records),
            "eligibleWorkers": len(cycle.workers),
            "ineligibleWorkers": len(cycle.refused),
            "unownedBuckets": cycle.unowned,
            "highestEpoch": self._epoch_floor,
        }
        if summary == self._summary:
            return
        path = f"/apis/{resources.API_VERSION}/namespaces/{self._namespace}/{resources.POOLS}"
        try:
            await self._client.merge_patch(f"{path}/{self._pool}/status", {"status": summary})
        except MailishError as exc:
            self._fail("writing the pool status", exc)
            return
        self._summary = summary

    def _fail(self, what: str, exc: Exception) -> None:
        log.warning("pool %s: %s failed: %s", self._label, what, exc)
        self._failed = True
        self._tracker.mark(self._namespace)

    def _log(self, cycle: Cycle, *, total: int) -> None:
        moves = cycle.plan.moves
        shown = ", ".join(
            f"{m.bucket}:{m.from_owner or '-'}->{m.to_owner or '-'}/{m.reason}"
            for m in moves[:_SHOWN_MOVES]
        )
        more = f" +{len(moves) - _SHOWN_MOVES}" if len(moves) > _SHOWN_MOVES else ""
        refused = ", ".join(f"{name}={reason}" for name, reason in cycle.refused.items())
        changed = bool(moves) or dict(cycle.refused) != self._last_refused
        self._last_refused = dict(cycle.refused)
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "plan %s: workers %d/%d eligible [%s]; buckets %d, missing %d, unowned %d; "
            "moves %d [%s%s]",
            self._label,
            len(cycle.workers),
            total,
            refused,
            len(cycle.records),
            len(cycle.missing),
            cycle.unowned,
            len(moves),
            shown,
            more,
        )
