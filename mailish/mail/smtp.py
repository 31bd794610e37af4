"""SMTP submission client over aiosmtplib, with our TLS policy and error translation.

``security=starttls`` *requires* the upgrade, done as its own step before anything else: a
server that does not offer STARTTLS or refuses it (5xx) is a ``TLSError``, a 4xx there is
``SmtpTemporary``; either way no credentials are sent in the clear. Plaintext that arrives
between "220 Ready to start TLS" and the handshake is discarded by aiosmtplib (RFC 3207 4.2).
Recipient refusals come back per address so callers can record partial acceptance and never
resend to accepted ones.

With ``allow_private_hosts=False`` the host is resolved and checked like every other
user-supplied host (``mail.hosts``) and the socket goes to *that* address, with the name kept
for SNI and the certificate check, so no second resolution can point us inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiosmtplib
from aiosmtplib.typing import Default

from mailish.domain.endpoints import Endpoint, Security, check_policy
from mailish.domain.errors import (
    AuthError,
    MailishError,
    PermanentError,
    ProtocolError,
    TLSError,
    TransientError,
    Unreachable,
)
from mailish.domain.logins import Login, OAuth2Login, PasswordLogin
from mailish.mail.hosts import resolve_checked
from mailish.mail.tls import client_context, describe_tls_failure

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class SendResult:
    accepted: tuple[str, ...]
    refused: dict[str, SmtpReply] = field(default_factory=dict)
    reply: SmtpReply | None = None


class SmtpRejected(PermanentError):
    def __init__(self, reply: SmtpReply, stage: str) -> None:
        super().__init__(f"SMTP {stage} rejected: {reply.code} {reply.message}")
        self.reply = reply
        self.stage = stage


class SmtpTemporary(TransientError):
    def __init__(self, reply: SmtpReply, stage: str) -> None:
        super().__init__(f"SMTP {stage} deferred: {reply.code} {reply.message}", delay=30.0)
        self.reply = reply
        self.stage = stage


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    endpoint: Endpoint
    ca_files: tuple[Path, ...] = ()
    allow_plaintext: bool = False
    timeout: float = DEFAULT_TIMEOUT
    #: False (the default): SSRF guard on, see the module docstring. Dev setups pass True.
    allow_private_hosts: bool = False


async def _checked_socket(settings: SmtpSettings) -> socket.socket | None:
    """A socket connected to the checked address, or None to let aiosmtplib connect."""
    if settings.allow_private_hosts:
        return None
    endpoint = settings.endpoint
    address = await resolve_checked(endpoint.host, endpoint.port, allow_private=False)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(settings.timeout):
            await asyncio.get_running_loop().sock_connect(sock, (address, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client with one hook: ``before_data`` is awaited after the envelope was
    accepted, right before DATA: the last moment at which the message surely has not reached
    the server. The sender records that moment durably (see ``worker/sending.py``)."""

    before_data: Callable[[], Awaitable[None]] | None = None

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109
    ) -> aiosmtplib.SMTPResponse:
        if self.before_data is not None:
            await self.before_data()
        return await super().data(message, timeout=timeout)


async def _connect(settings: SmtpSettings) -> _Client:
    """A connected client, TLS in place (implicit or STARTTLS); nothing sent beyond EHLO."""
    check_policy(settings.endpoint, allow_plaintext=settings.allow_plaintext)
    endpoint = settings.endpoint
    context = client_context(settings.ca_files)
    try:
        sock = await _checked_socket(settings)
    except OSError as exc:
        raise Unreachable(f"SMTP {endpoint}: cannot connect ({exc})") from exc
    except TimeoutError as exc:
        raise Unreachable(f"SMTP {endpoint}: cannot connect (timeout)") from exc
    client = _Client(
        hostname=endpoint.host,
        port=None if sock is not None else endpoint.port,
        sock=sock,
        use_tls=endpoint.security is Security.TLS,
        start_tls=False,  # done below, as a step of its own
        tls_context=context,
        validate_certs=True,
        timeout=settings.timeout,
    )
    stage = "connect"
    try:
        await client.connect()
        if endpoint.security is Security.STARTTLS:
            stage = "starttls"
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise TLSError(
                    f"SMTP {endpoint.host}: server does not offer STARTTLS; refusing plaintext"
                )
            await client.starttls(tls_context=context)
    except BaseException as exc:
        client.close()
        if sock is not None:
            sock.close()
        if isinstance(exc, Exception):
            raise _translate(exc, settings, stage) from exc
        raise
    return client


def _reply(exc: aiosmtplib.SMTPResponseException) -> SmtpReply:
    return SmtpReply(exc.code, exc.message)


def _translate(exc: BaseException, settings: SmtpSettings, stage: str) -> MailishError:
    host = settings.endpoint.host
    if isinstance(exc, MailishError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return AuthError(f"SMTP {host}: login refused ({exc.code} {exc.message})")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = _reply(exc)
        if 400 <= reply.code < 500:
            return SmtpTemporary(reply, stage)
        if stage == "starttls":
            return TLSError(
                f"SMTP {host}: server refused STARTTLS ({reply.code} {reply.message}); "
                "refusing plaintext"
            )
        return SmtpRejected(reply, stage)
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return describe_tls_failure(exc, host)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPConnectTimeoutError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return describe_tls_failure(cause, host)
        return Unreachable(f"SMTP {host}:{settings.endpoint.port}: cannot connect ({exc})")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError):
        return TransientError(f"SMTP {host}: connection lost during {stage} ({exc})", delay=5.0)
    if isinstance(exc, socket.gaierror | OSError | asyncio.TimeoutError):
        return Unreachable(f"SMTP {host}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return ProtocolError(f"SMTP {host}: {exc}")
    return ProtocolError(f"SMTP {host}: unexpected {type(exc).__name__}")


async def _authenticate(client: aiosmtplib.SMTP, login: Login) -> None:
    if isinstance(login, OAuth2Login):
        await client.auth_xoauth2(login.username, login.access_token)
    elif isinstance(login, PasswordLogin):
        await client.login(login.username, login.password)


async def verify_login(settings: SmtpSettings, login: Login) -> None:
    """Connect, negotiate TLS, authenticate and quit; raises a translated error on failure."""
    client = await _connect(settings)
    stage = "login"
    try:
        await _authenticate(client, login)
        stage = "quit"
        await client.quit()
    except Exception as exc:
        raise _translate(exc, settings, stage) from exc
    finally:
        client.close()


async def send_raw(
    settings: SmtpSettings,
    login: Login,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
    before_data: Callable[[], Awaitable[None]] | None = None,
) -> SendResult:
    """Submit ``message`` unchanged. Refused recipients are reported, not raised, unless all are.

    ``before_data`` runs once the envelope is accepted, right before DATA; if it raises,
    nothing is sent. Only a connection lost after it ran is reported "during data": only
    from then on may the server have taken the message.
    """
    client = await _connect(settings)
    stage = "login"

    async def entering_data() -> None:
        nonlocal stage
        if before_data is not None:
            await before_data()
        stage = "data"

    client.before_data = entering_data
    try:
        await _authenticate(client, login)
        stage = "envelope"
        refused_raw, reply_text = await client.sendmail(envelope_from, list(recipients), message)
        refused = {addr: SmtpReply(r.code, r.message) for addr, r in refused_raw.items()}
        accepted = tuple(r for r in recipients if r not in refused)
        stage = "quit"
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()  # the message is accepted; a failed QUIT changes nothing
        return SendResult(accepted, refused, SmtpReply(250, reply_text))
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = {e.recipient: SmtpReply(e.code, e.message) for e in exc.recipients}
        if all(400 <= r.code < 500 for r in refused.values()):
            first = next(iter(refused.values()))
            raise SmtpTemporary(first, "rcpt") from exc
        raise SmtpRejected(next(iter(refused.values())), "rcpt") from exc
    except Exception as exc:
        raise _translate(exc, settings, stage) from exc
    finally:
        client.close()
