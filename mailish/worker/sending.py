"""The sender: delivers an account's due outbox rows through its own SMTP server, once.

Every row is claimed in a fenced transaction before the SMTP conversation, so a worker that
lost its bucket never sends. Results are recorded per recipient: refused ones are listed,
accepted ones are never sent to again. A 4xx is retried with backoff up to ``MAX_ATTEMPTS``;
a 5xx fails with the server's reason.

Mail goes out at most once. Right before DATA (the envelope accepted) the row is marked
``unknown`` in a fenced transaction: from then on the server may have the message. If the
connection drops, or the worker dies, before the outcome is recorded, nobody knows whether the
server took it, so it is never sent again: the Sent folder is searched for its Message-ID
(providers that file their own copy settle it as sent), and otherwise the row fails with an
"outcome unknown" error for the user to judge (RFC 1047: resending would most likely deliver
it twice). A row still ``sending`` never reached DATA and is sent normally.
After a send, a copy goes to Sent (with \\Seen) unless the provider already filed one, before
the send is recorded: a crash in between leaves an ``unknown`` row that the copy settles.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from mailish.domain.buckets import BucketLease
from mailish.domain.errors import AuthError, MailishError, TransientError
from mailish.domain.logins import Login
from mailish.mail import smtp
from mailish.mail.imap.connection import ImapError
from mailish.mail.imap.session import ImapSession
from mailish.observability import metrics
from mailish.observability.crashpoints import crash_point
from mailish.store import claims, outbox, views
from mailish.store.connecting import Pool
from mailish.worker.supervising import Backoff

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
OUTCOME_UNKNOWN = (
    "outcome unknown: the connection or the worker was lost after DATA began, so the server "
    "may have accepted the message; it was not sent again to avoid a duplicate"
)


@dataclass
class Sender:
    session: ImapSession
    pool: Pool
    lease: BucketLease
    account_id: UUID
    smtp: smtp.SmtpSettings | None
    #: The SMTP login, or a function returning a current one (OAuth2 tokens expire).
    login: Login | Callable[[], Awaitable[Login]]
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=30.0, maximum=3600.0))
    #: Folders (raw names) that changed on the server (the Sent copy).
    touched: set[str] = field(default_factory=set)

    async def send_due(self) -> int:
        async with self.pool.acquire() as conn:
            due = await outbox.due(conn, account_id=self.account_id, epoch=self.lease.epoch)
        if not due:
            return 0
        # Before any claim: a revoked grant (AuthError) leaves every item queued as it was.
        login = await self.login() if callable(self.login) else self.login
        for item in due:
            await self._one(item, login)
        return len(due)

    async def _one(self, item: outbox.Pending, login: Login) -> None:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            if not await outbox.claim(
                conn, account_id=self.account_id, outbox_id=item.id, epoch=self.lease.epoch,
                from_status=item.status,
            ):  # fmt: skip
                return  # cancelled or taken meanwhile
        crash_point("send.claimed")
        if item.status in ("unknown", "sending") and await self._in_sent(item.message_id):
            await self._finish(item, "sent", item.recipients, {}, None)
            return
        if item.status == "unknown":
            metrics.send_errors.labels(reason="unknown").inc()
            await self._finish(item, "failed", item.accepted, {}, OUTCOME_UNKNOWN)
            return
        if self.smtp is None:
            await self._finish(item, "failed", item.accepted, {}, "account has no SMTP server")
            return
        try:
            result = await smtp.send_raw(
                self.smtp, login, envelope_from=item.envelope_from,
                recipients=list(item.remaining), message=item.raw,
                before_data=lambda: self._mark_in_doubt(item),
            )  # fmt: skip
            crash_point("send.accepted")
        except AuthError as exc:
            # The login is refused (a changed password, a revoked grant): the mail is not at
            # fault. It stays queued, and the account stops as auth_invalid until the user
            # signs in again; then it goes out.
            metrics.send_errors.labels(reason="auth").inc()
            await self._retry(item, "queued", f"login refused: {exc}", at_once=True)
            raise
        except smtp.SmtpRejected as exc:
            metrics.send_errors.labels(reason="rejected").inc()
            await self._finish(item, "failed", item.accepted, {}, str(exc))
            return
        except smtp.SmtpTemporary as exc:
            metrics.send_errors.labels(reason="temporary").inc()
            await self._retry(item, "queued", str(exc))
            return
        except TransientError as exc:
            metrics.send_errors.labels(reason="connection").inc()
            ambiguous = "during data" in str(exc)
            await self._retry(item, "unknown" if ambiguous else "queued", str(exc))
            return
        except MailishError as exc:
            metrics.send_errors.labels(reason="unknown").inc()
            await self._finish(item, "failed", item.accepted, {}, str(exc))
            return
        accepted = tuple(dict.fromkeys((*item.accepted, *result.accepted)))
        refused = {a: {"code": r.code, "message": r.message} for a, r in result.refused.items()}
        status = "partially_sent" if refused else "sent"
        if refused:
            metrics.send_errors.labels(reason="rejected").inc()
        await self._file_sent_copy(item)
        crash_point("send.filed")
        await self._finish(item, status, accepted, refused, None)
        crash_point("send.recorded")

    async def _mark_in_doubt(self, item: outbox.Pending) -> None:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await outbox.mark_in_doubt(conn, account_id=self.account_id, outbox_id=item.id)
        crash_point("send.in_doubt")

    async def _sent_folder(self) -> str | None:
        async with self.pool.acquire() as conn:
            return await views.role_folder(conn, account_id=self.account_id, role="sent")

    async def _in_sent(self, message_id: str) -> bool:
        sent = await self._sent_folder()
        if sent is None:
            return False
        await self.session.select(sent, readonly=True)
        bare = message_id.strip().strip("<>").replace('"', "").replace("\\", "")
        found = await self.session.search_uids(
            b'HEADER Message-ID "' + bare.encode("ascii", "replace") + b'"'
        )
        return bool(found)

    async def _file_sent_copy(self, item: outbox.Pending) -> None:
        sent = await self._sent_folder()
        if sent is None:
            return
        try:
            if not await self._in_sent(item.message_id):
                await self.session.append(sent, item.raw, flags=["\\Seen"])
            self.touched.add(sent)
        except (ImapError, MailishError) as exc:  # the mail went out; the copy is secondary
            log.warning("could not file the Sent copy: %s", exc)

    async def _finish(
        self,
        item: outbox.Pending,
        status: str,
        accepted: tuple[str, ...],
        refused: Mapping[str, object],
        error: str | None,
    ) -> None:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await outbox.finish(
                conn, account_id=self.account_id, outbox_id=item.id, status=status,
                accepted=accepted, refused=dict(refused), error=error,
            )  # fmt: skip
        log.info("outbox %s: %s", item.id, status)

    async def _retry(
        self, item: outbox.Pending, status: str, error: str, *, at_once: bool = False
    ) -> None:
        if item.attempts + 1 >= MAX_ATTEMPTS:
            await self._finish(item, "failed", item.accepted, {}, f"gave up: {error}")
            return
        delay = dt.timedelta(
            seconds=0 if status == "unknown" or at_once else self.backoff.delay(item.attempts)
        )
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await outbox.retry_later(
                conn, account_id=self.account_id, outbox_id=item.id, status=status,
                accepted=item.accepted, error=error, delay=delay,
            )  # fmt: skip
