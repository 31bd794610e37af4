"""Device pushes from the worker: "new mail" for the accounts it owns, and a last
"reauth required" push before an account's devices are unsubscribed.

**Signal.** The same ``mailish_changes`` notifications the api follows, from one LISTEN
connection per worker (``feed.ChangeListener``); ``owns`` keeps the accounts of this worker's
buckets, so each commit is pushed by exactly one process. ``notify`` can also be called
directly with ``(account_id, state)``.

**Coalescing.** Each account with pending notifications has one drainer task. It waits
``gather`` for the rest of a burst, asks once whether the whole range ``(seen, newest]``
brought new unread inbox mail (flag changes, moves, sent copies and drafts do not count),
pushes at most once, then rests ``cooldown`` before looking again: a sync storing a thousand
messages costs one push per cooldown, and the first push still leaves within ``gather``.

**Delivery.** JSON ``{account_id, state, reason}`` POSTed with a timeout; connection errors,
timeouts, 429 and 5xx are retried with jittered backoff, at most ``attempts`` times. 404 and
410 mean the device is gone: its subscription is dropped. Other answers count as failures and
``max_failures`` failed pushes in a row drop the subscription too. Endpoints are user input:
the host is resolved and checked (no private addresses unless allowed) and the request goes
to that checked address, with the name kept for Host and TLS, so DNS cannot swap in an
internal address between check and connect. Endpoint URLs can hold capability tokens, so
logs name the device and host only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import httpx

from mailish.domain.errors import PermanentError, TransientError
from mailish.mail import hosts
from mailish.mail.tls import describe_tls_failure, tls_cause
from mailish.store import feed, push_subscriptions
from mailish.store.connecting import Conn, Pool
from mailish.store.push_subscriptions import Subscription
from mailish.worker.supervising import Backoff

log = logging.getLogger(__name__)
LISTENER_NAME = "mailish-worker-push"


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    GONE = "gone"  # 404/410: the push service forgot the device
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PushTuning:
    gather: float = 0.05
    cooldown: float = 1.0
    timeout: float = 5.0
    attempts: int = 4
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, maximum=3.0))
    max_failures: int = 20
    concurrency: int = 32  # POSTs in flight per worker


class Pusher:
    def __init__(
        self,
        *,
        pool: Pool,
        dsn: str,
        http: httpx.AsyncClient,
        owns: Callable[[UUID], bool],
        allow_private_hosts: bool = False,
        tuning: PushTuning | None = None,
    ) -> None:
        self._pool = pool
        self._http = http
        self._owns = owns
        self._allow_private = allow_private_hosts
        self._tuning = tuning or PushTuning()
        self._slots = asyncio.Semaphore(self._tuning.concurrency)
        self._pending: dict[UUID, int] = {}
        self._seen: dict[UUID, int] = {}
        self._drainers: dict[UUID, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.listener = feed.ChangeListener(
            dsn, on_change=self.notify, on_listen=self._catch_up, application_name=LISTENER_NAME
        )

    async def run(self) -> None:
        """Follow notifications and push until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.listener.run(), name="push-listener")
        finally:
            self._group = None
            self._pending.clear()

    def notify(self, account_id: UUID, state: int) -> None:
        """A commit moved ``account_id`` to ``state``; cheap, never blocks."""
        if self._group is None:
            raise RuntimeError("Pusher.notify needs Pusher.run() running")
        if not self._owns(account_id):
            self._seen.pop(account_id, None)
            return
        self._seen.setdefault(account_id, state - 1)
        if state > self._pending.get(account_id, -1):
            self._pending[account_id] = state
        if account_id not in self._drainers:
            task = self._group.create_task(self._drain(account_id), name="push-drain")
            self._drainers[account_id] = task

    async def _catch_up(self) -> None:
        """After a (re)connect: notifications may have been lost; look at known accounts."""
        if not self._seen:
            return
        async with self._pool.acquire() as conn:
            states = await feed.current_states(conn, account_ids=list(self._seen))
        for account_id, state in states.items():
            self.notify(account_id, state)

    async def _drain(self, account_id: UUID) -> None:
        try:
            while True:
                await asyncio.sleep(self._tuning.gather)
                upto = self._pending.pop(account_id, None)
                if upto is None:
                    return  # no await since the pop: a new notify starts a new drainer
                after = self._seen.get(account_id, upto - 1)
                if upto <= after:
                    continue
                try:
                    async with self._pool.acquire() as conn:
                        fresh = await feed.new_mail_between(
                            conn, account_id=account_id, after=after, upto=upto
                        )
                    self._seen[account_id] = upto
                    if fresh:
                        await self.push(account_id, state=upto, reason="new_mail")
                        await asyncio.sleep(self._tuning.cooldown)
                except Exception:  # the drainer's task root; a failed check is retried with
                    # the next notification, a failed push is not (some devices may have it)
                    log.exception("new-mail push for an account failed")
        finally:
            self._drainers.pop(account_id, None)

    async def push(self, account_id: UUID, *, state: int, reason: str) -> dict[str, Outcome]:
        """Push to every device of the account; returns each device's outcome."""
        async with self._pool.acquire() as conn:
            devices = await push_subscriptions.list_for(conn, account_id=account_id)
        outcomes = await self._deliver_all(devices, state=state, reason=reason)
        async with self._pool.acquire() as conn:
            for device in devices:
                await self._record(conn, device, outcomes[device.device_id])
        return outcomes

    async def reauth_required(self, account_id: UUID) -> dict[str, Outcome]:
        """The account's credentials stopped working: tell every device once, then forget them."""
        async with self._pool.acquire() as conn:
            states = await feed.current_states(conn, account_ids=[account_id])
            devices = await push_subscriptions.list_for(conn, account_id=account_id)
        state = states.get(account_id, 0)
        outcomes = await self._deliver_all(devices, state=state, reason="reauth_required")
        async with self._pool.acquire() as conn:
            for device in devices:
                await push_subscriptions.drop(conn, subscription=device)
        log.info("reauth_required pushed to %d device(s), all unsubscribed", len(devices))
        return outcomes

    async def _deliver_all(
        self, devices: list[Subscription], *, state: int, reason: str
    ) -> dict[str, Outcome]:
        if not devices:
            return {}
        payload = {"account_id": str(devices[0].account_id), "state": str(state), "reason": reason}
        results = await asyncio.gather(*(self._deliver(d, payload) for d in devices))
        return {d.device_id: outcome for d, outcome in zip(devices, results, strict=True)}

    async def _record(self, conn: Conn, device: Subscription, outcome: Outcome) -> None:
        if outcome is Outcome.DELIVERED:
            if device.failures:
                await push_subscriptions.record_delivery(conn, subscription=device)
        elif outcome is Outcome.GONE:
            log.info("device %s is gone; unsubscribed", device.device_id)
            await push_subscriptions.drop(conn, subscription=device)
        else:
            failures = await push_subscriptions.record_failure(conn, subscription=device)
            if failures >= self._tuning.max_failures:
                log.info("device %s failed %d pushes; unsubscribed", device.device_id, failures)
                await push_subscriptions.drop(conn, subscription=device)

    async def _deliver(self, device: Subscription, payload: dict[str, str]) -> Outcome:
        """One push with bounded retries; never raises (except cancellation)."""
        tuning = self._tuning
        for attempt in range(tuning.attempts):
            if attempt:
                await asyncio.sleep(tuning.backoff.delay(attempt - 1))
            try:
                async with self._slots:
                    status = await self._post(device.endpoint, payload)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, PermanentError) as exc:
                log.warning("push to device %s refused: %s", device.device_id, exc)
                return Outcome.FAILED
            except (httpx.TransportError, TransientError) as exc:
                failure = tls_cause(exc)
                if isinstance(failure, ssl.SSLCertVerificationError | ssl.CertificateError):
                    # a certificate does not get better by retrying
                    host = httpx.URL(device.endpoint).host
                    log.warning("push to device %s refused: %s", device.device_id,
                                describe_tls_failure(failure, host))  # fmt: skip
                    return Outcome.FAILED
                log.info("push to device %s: %s (attempt %d)", device.device_id,
                         type(exc).__name__, attempt + 1)  # fmt: skip
                continue
            except Exception:  # unexpected: one device must not break the others
                log.exception("push to device %s crashed", device.device_id)
                return Outcome.FAILED
            if 200 <= status < 300:
                return Outcome.DELIVERED
            if status in (404, 410):
                return Outcome.GONE
            if status != 429 and status < 500:
                log.info("push to device %s answered %d", device.device_id, status)
                return Outcome.FAILED
        return Outcome.FAILED

    async def _post(self, endpoint: str, payload: dict[str, str]) -> int:
        url = httpx.URL(endpoint)
        if url.scheme not in ("https", "http"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await hosts.resolve_checked(host, port, allow_private=self._allow_private)
        response = await self._http.post(
            url.copy_with(host=address),
            json=payload,
            headers={"Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": host} if url.scheme == "https" else {},
            timeout=self._tuning.timeout,
            follow_redirects=False,
        )
        return response.status_code
