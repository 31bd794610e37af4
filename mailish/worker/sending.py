"""The sender: delivers an account's due outbox rows through its own SMTP server, once.

Every row is claimed in a fenced transaction before the SMTP conversation, so a worker that
lost its bucket never sends. Results are recorded per recipient: refused ones are listed,
accepted ones are never sent to again. A 4xx is retried with backoff up to ``MAX_ATTEMPTS``;
a 5xx fails with the server's reason. If the connection drops after DATA, nobody knows
whether the server took the message: the row becomes ``unknown`` and, before anything is
retried, the Sent folder is searched for its Message-ID (providers that file their own copy
settle it); only if it is absent is the message sent again, once, with the same Message-ID.
After a send, a copy goes to Sent (with \\Seen) unless the provider already filed one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from mailish.domain.buckets import BucketLease
from mailish.domain.errors import AuthError, MailishError, TransientError
from mailish.domain.logins import Login
from mailish.mail import smtp
from mailish.mail.imap.connection import ImapError
from mailish.mail.imap.session import ImapSession
from mailish.observability import metrics
from mailish.store import claims, outbox, views
from mailish.store.connecting import Pool
from mailish.worker.supervising import Backoff

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


@dataclass
class Sender:
    session: ImapSession
    pool: Pool
    lease: BucketLease
    account_id: UUID
    smtp: smtp.SmtpSettings | None
    login: Login
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=30.0, maximum=3600.0))
    #: Folders (raw names) that changed on the server (the Sent copy).
    touched: set[str] = field(default_factory=set)

    async def send_due(self) -> int:
        async with self.pool.acquire() as conn:
            due = await outbox.due(conn, account_id=self.account_id, epoch=self.lease.epoch)
        for item in due:
            await self._one(item)
        return len(due)

    async def _one(self, item: outbox.Pending) -> None:
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            if not await outbox.claim(
                conn, account_id=self.account_id, outbox_id=item.id, epoch=self.lease.epoch,
                from_status=item.status,
            ):  # fmt: skip
                return  # cancelled or taken meanwhile
        if item.status in ("unknown", "sending") and await self._in_sent(item.message_id):
            await self._finish(item, "sent", item.recipients, {}, None)
            return
        if self.smtp is None:
            await self._finish(item, "failed", item.accepted, {}, "account has no SMTP server")
            return
        try:
            result = await smtp.send_raw(
                self.smtp, self.login, envelope_from=item.envelope_from,
                recipients=list(item.remaining), message=item.raw,
            )  # fmt: skip
        except (smtp.SmtpRejected, AuthError) as exc:
            metrics.send_errors.labels(
                reason="auth" if isinstance(exc, AuthError) else "rejected"
            ).inc()
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
        await self._finish(item, status, accepted, refused, None)
        await self._file_sent_copy(item)

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

    async def _retry(self, item: outbox.Pending, status: str, error: str) -> None:
        if item.attempts + 1 >= MAX_ATTEMPTS or (status == "unknown" and item.status == "unknown"):
            # an unknown outcome is retried once only: the Sent search decided "absent" once
            await self._finish(item, "failed", item.accepted, {}, f"gave up: {error}")
            return
        delay = dt.timedelta(
            seconds=0 if status == "unknown" else self.backoff.delay(item.attempts)
        )
        async with self.pool.acquire() as conn, claims.fenced(conn, self.lease):
            await outbox.retry_later(
                conn, account_id=self.account_id, outbox_id=item.id, status=status,
                accepted=item.accepted, error=error, delay=delay,
            )  # fmt: skip
