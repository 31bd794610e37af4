"""Keeps one account syncing: builds its connection settings, restarts the sync loop after
transient failures with bounded backoff, and stops for good on authentication failure.

An account whose login is refused becomes ``auth_invalid``: no retry storm against the
provider (which would lock the user out), and no new attempt until its credentials change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint
from mailish.domain.errors import AuthError, Fenced, PermanentError, TransientError
from mailish.domain.logins import Login
from mailish.mail.credentials import CredentialError, KeyRing
from mailish.mail.imap.connection import ImapSettings
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.policy import ConnectionPolicy
from mailish.mail.smtp import SmtpSettings
from mailish.observability.logs import bind
from mailish.services.oauth_login import OAUTH2, login_for_account, stored_login
from mailish.store import accounts
from mailish.store.accounts import AccountRecord
from mailish.store.connecting import Pool
from mailish.worker.account_sync import AccountSync, SyncTuning
from mailish.worker.pushing import Pusher
from mailish.worker.supervising import Backoff

log = logging.getLogger(__name__)


def imap_settings(record: AccountRecord, policy: ConnectionPolicy) -> ImapSettings:
    try:
        return policy.imap(Endpoint.from_json(record.settings.get("imap") or {}))
    except ValueError as exc:
        raise PermanentError(f"account has no usable IMAP settings ({exc})") from exc


def smtp_settings(record: AccountRecord, policy: ConnectionPolicy) -> SmtpSettings | None:
    server = record.settings.get("smtp")
    if not server:
        return None
    try:
        return policy.smtp(Endpoint.from_json(server))
    except ValueError as exc:
        raise PermanentError(f"account has no usable SMTP settings ({exc})") from exc


@dataclass
class AccountRunner:
    pool: Pool
    lease: BucketLease
    record: AccountRecord
    keyring: KeyRing
    policy: ConnectionPolicy
    tuning: SyncTuning = field(default_factory=SyncTuning)
    backoff: Backoff = field(default_factory=Backoff)
    healthy: bool = False
    sync: AccountSync | None = None
    pusher: Pusher | None = None
    broker: TokenBroker | None = None
    #: Shared by the worker's accounts: a slot is held while connecting, logging in and
    #: running the first round (at most ``startup_hold`` seconds of it, so one huge initial
    #: sync cannot hold the others back). Without it, a worker taking over 500 accounts
    #: opened 500 logins at once: Dovecot answered some AUTHENTICATEs after the 30 s timeout
    #: (retries, backoff), and the transient memory of 500 concurrent first rounds stayed
    #: resident (~360 KB per idle account; ~110 KB with 50 at a time).
    startup_gate: asyncio.Semaphore | None = None
    startup_hold: float = 10.0

    async def run(self) -> None:
        """Sync until cancelled, fenced, or the credentials are refused."""
        attempt = 0
        with bind(account_id=str(self.record.id), bucket=self.lease.bucket):
            while True:
                try:
                    self.sync = AccountSync(
                        pool=self.pool, lease=self.lease, account_id=self.record.id,
                        imap=imap_settings(self.record, self.policy),
                        smtp=smtp_settings(self.record, self.policy),
                        login=await self._login(), tuning=self.tuning,
                        relogin=self._login if self.record.auth_kind == OAUTH2 else None,
                    )  # fmt: skip
                    self.healthy = True
                    await self._run_sync(self.sync)
                    return
                except Fenced as exc:
                    # The bucket moved on; the worker's audit stops it. Nothing to retry here.
                    self.healthy = False
                    log.info("account stopped: %s", exc)
                    return
                except (AuthError, CredentialError) as exc:
                    self.healthy = False
                    log.warning("login refused; account needs new credentials: %s", exc)
                    await self._mark("auth_invalid", str(exc))
                    if self.pusher is not None:
                        await self.pusher.reauth_required(self.record.id)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the account's task root
                    self.healthy = False
                    if self.sync is not None and self.sync.rounds:
                        attempt = 0  # it had synced: a new outage, not this one's next try
                    delay = max(
                        exc.delay if isinstance(exc, TransientError) else 0.0,
                        self.backoff.delay(attempt),
                    )
                    attempt += 1
                    log.warning(
                        "sync failed (%s: %s); retrying in %.1fs",
                        type(exc).__name__, exc, delay,
                        exc_info=not isinstance(exc, TransientError | PermanentError),
                    )  # fmt: skip
                    await self._error(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(delay)

    async def _run_sync(self, sync: AccountSync) -> None:
        """``sync.run()``, holding a startup slot until its first round is done (or
        ``startup_hold`` passed, or it ended); its exceptions propagate unchanged."""
        gate = self.startup_gate
        if gate is None:
            await sync.run()
            return
        async with gate:
            running = asyncio.create_task(sync.run(), name=f"sync-{self.record.id}")
            try:
                synced = asyncio.create_task(sync.synced.wait())
                try:
                    await asyncio.wait(
                        {running, synced}, timeout=self.startup_hold,
                        return_when=asyncio.FIRST_COMPLETED,
                    )  # fmt: skip
                finally:
                    synced.cancel()
                    await asyncio.gather(synced, return_exceptions=True)
            except BaseException:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                raise
        try:
            await running
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

    async def _login(self) -> Login:
        """A fresh login: OAuth2 accounts get an access token refreshed single-flight."""
        if self.broker is None:
            return stored_login(self.keyring, self.record)
        return await login_for_account(self.pool, self.keyring, self.broker, self.record)

    async def _mark(self, status: str, reason: str) -> None:
        async with self.pool.acquire() as conn:
            await accounts.set_status(conn, account_id=self.record.id, status=status, reason=reason)
            await accounts.set_sync_state(
                conn, account_id=self.record.id, state="stopped", last_error=reason
            )

    async def _error(self, message: str) -> None:
        async with self.pool.acquire() as conn:
            await accounts.set_sync_state(
                conn, account_id=self.record.id, state="error", last_error=message[:500]
            )
