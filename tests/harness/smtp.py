"""An in-process SMTP submission server (aiosmtpd) with scripted failures, for send-path tests.

Why in-process: tests can read what was received (byte-exact, with envelope and login) and flip
failure modes without any IPC. Each port runs in its own aiosmtpd ``Controller`` thread with its
own event loop, so it never competes with pytest-asyncio's loop.

Scripted behaviour (same as the reference smtp_test_server.py):

* ``RCPT TO:<reject...@...>`` -> 550, ``<tempfail...@...>`` -> 451 (others still accepted)
* ``MAIL FROM:<blocked...@...>`` -> 553
* header ``X-Test-Reject: yes`` -> 554 after DATA
* more than ``data_size_limit`` bytes -> 552
* ``drop_after_data = True`` -> the message is recorded, then the connection is closed without a
  reply (the client cannot know whether it was accepted: the "ambiguous ack" case).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import contextlib
import itertools
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.harness.ca import LocalCA
from tests.harness.dovecot import free_port
from tests.harness.oauth import verify_token

DEFAULT_SIZE_LIMIT = 10 * 1024 * 1024
_names = itertools.count(1)


@dataclass(frozen=True)
class Received:
    """One accepted message: envelope, exact DATA bytes (dot-unstuffed) and the AUTH identity."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_user: str | None
    mail_options: list[str] = field(default_factory=list)
    port: int = 0


@dataclass(frozen=True)
class SmtpUser:
    """A login accepted by AUTH PLAIN/LOGIN."""

    name: str
    password: str


class _Handler:
    """aiosmtpd hooks; ``auth_XOAUTH2`` adds the mechanism (aiosmtpd finds ``auth_*`` methods)."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and self.owner.check_password(
            data.login.decode(errors="replace"), data.password.decode(errors="replace")
        )
        # handled=False: with the default (True) a failed AUTH gets no 535 and the client hangs.
        login = data.login.decode(errors="replace") if ok else None
        return AuthResult(success=ok, handled=False, auth_data=login)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                raw = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            reply = await server.challenge_auth("")
            if not isinstance(reply, bytes):  # "*" or bad base64: aiosmtpd already replied 501
                return AuthResult(success=False, handled=True)
            raw = reply
        parts = raw.decode(errors="replace").split("\x01")
        fields = {k: v for k, eq, v in (p.partition("=") for p in parts) if eq}
        user = fields.get("user")
        token = fields.get("auth", "").removeprefix("Bearer ")
        if user and verify_token(token) == user:
            return AuthResult(success=True, auth_data=user)
        # RFC 7628-style error challenge; the client answers with an empty line, then gets 535.
        error = base64.b64encode(b'{"status":"401","schemes":"bearer"}').decode()
        await server.push(f"334 {error}")
        await server._reader.readline()
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower().startswith("blocked"):
            return "553 5.7.1 Sender rejected (test)"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        lowered = address.lower()
        if lowered.startswith("reject"):
            return "550 5.1.1 Recipient rejected (test)"
        if lowered.startswith("tempfail"):
            return "451 4.3.0 Temporary failure (test)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        headers = b"\n" + data.split(b"\r\n\r\n", 1)[0].lower()
        if b"\nx-test-reject: yes" in headers or b"[test-reject-554]" in headers:
            return "554 5.6.0 Message content rejected (test)"
        sockname = server.transport.get_extra_info("sockname") if server.transport else None
        n = self.owner._record(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(data),
                auth_user=session.auth_data if isinstance(session.auth_data, str) else None,
                mail_options=list(envelope.mail_options),
                port=sockname[1] if sockname else 0,
            )
        )
        if self.owner.drop_after_data:
            # Close without a reply; aiosmtpd cancels this coroutine from connection_lost, so
            # the "250" below is never written. The sleep only bounds a broken transport.
            if server.transport is not None:
                server.transport.close()
            await asyncio.sleep(30)
        return f"250 2.0.0 OK queued as {n:06d}"


class _QuietSession(Session):
    """aiosmtpd sets the deprecated ``login_data`` on every AUTH and warns; shadow it."""

    login_data: Any = None


class _SMTP(SMTP):
    def __init__(self, *args: Any, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if implicit_tls:
            # aiosmtpd only counts STARTTLS as TLS; on this port the socket is TLS from the
            # first byte. Passing auth_require_tls=False instead would warn on every connection.
            self._auth_require_tls = False

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)


class _Controller(Controller):
    """A Controller whose SMTP instances read the size limit live and know implicit TLS."""

    def __init__(self, owner: SmtpServer, *, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(owner._handler, **kwargs)
        self.owner = owner
        self.implicit_tls = implicit_tls

    def factory(self) -> SMTP:
        kwargs = dict(self.SMTP_kwargs)
        kwargs["data_size_limit"] = self.owner.data_size_limit
        return _SMTP(self.handler, implicit_tls=self.implicit_tls, **kwargs)


class SmtpServer:
    """Submission server on 127.0.0.1: ``port`` (STARTTLS required) and ``tls_port`` (implicit).

    Both require AUTH (PLAIN, LOGIN, XOAUTH2) and present the test CA's certificate.
    Set ``drop_after_data`` / ``data_size_limit`` at run time (``monkeypatch.setattr`` restores).
    """

    def __init__(self, ca: LocalCA, *, data_size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.ca = ca
        self.host = "127.0.0.1"
        self.port = 0
        self.tls_port = 0
        self.data_size_limit = data_size_limit
        self.drop_after_data = False
        self._handler = _Handler(self)
        self._users: dict[str, str] = {}
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._seq = itertools.count(1)
        self._controllers: list[_Controller] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start both listeners (fresh Controllers: a stopped one has closed its loop)."""
        if self._controllers:
            return
        ctx = self.ca.server_context()
        common: dict[str, Any] = {
            "hostname": self.host,
            "server_hostname": "localhost",
            "authenticator": self._handler.authenticate,
            "auth_required": True,
            "enable_SMTPUTF8": True,
        }
        if not self.port:  # a restart keeps the ports, so configured clients reconnect
            self.port, self.tls_port = free_port(self.host), free_port(self.host)
        starttls = _Controller(
            self,
            implicit_tls=False,
            port=self.port,
            tls_context=ctx,
            require_starttls=True,
            **common,
        )
        implicit = _Controller(
            self, implicit_tls=True, port=self.tls_port, ssl_context=ctx, **common
        )
        try:
            for controller in (starttls, implicit):
                controller.start()
                self._controllers.append(controller)
        except BaseException:
            self.stop()
            raise
        _running.add(self)

    def stop(self) -> None:
        for controller in self._controllers:
            with contextlib.suppress(Exception):
                controller.stop()
        self._controllers.clear()
        _running.discard(self)

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- users ----------------------------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None) -> SmtpUser:
        """Add (or replace) a PLAIN/LOGIN login; a unique name is generated if none is given."""
        with self._cond:
            if name is None:
                name = f"smtpuser{next(_names):04d}"
            password = secrets.token_urlsafe(12) if password is None else password
            self._users[name] = password
        return SmtpUser(name=name, password=password)

    def remove_user(self, name: str) -> None:
        with self._cond:
            self._users.pop(name, None)

    def check_password(self, name: str, password: str) -> bool:
        with self._cond:
            expected = self._users.get(name)
        return expected is not None and secrets.compare_digest(expected, password)

    # --- received mail ----------------------------------------------------------------------------

    def _record(self, message: Received) -> int:
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()
            return next(self._seq)

    @property
    def received(self) -> list[Received]:
        """A snapshot of everything received since the last ``clear()``."""
        with self._cond:
            return list(self._received)

    def received_by(self, auth_user: str) -> list[Received]:
        """Messages sent by one login: tests share the session server, so filter by user."""
        return [r for r in self.received if r.auth_user == auth_user]

    def clear(self) -> None:
        with self._cond:
            self._received.clear()

    def _matching(self, auth_user: str | None) -> list[Received]:
        if auth_user is None:
            return list(self._received)
        return [r for r in self._received if r.auth_user == auth_user]

    def wait_for_sync(
        self, n: int, timeout: float = 5.0, *, auth_user: str | None = None
    ) -> list[Received]:
        """Block until at least ``n`` messages (of ``auth_user``, if given) arrived; return them.

        Only for sync tests: blocking an event loop here would stall an async client.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._matching(auth_user)) >= n, timeout):
                got = len(self._matching(auth_user))
                raise TimeoutError(f"expected {n} messages, got {got} within {timeout} s")
            return self._matching(auth_user)

    async def wait_for(
        self,
        n: int,
        timeout: float = 5.0,
        *,
        auth_user: str | None = None,
    ) -> list[Received]:
        """Wait (polling, without blocking the loop) until ``n`` messages arrived; return them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                got = self._matching(auth_user)
            if len(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(f"expected {n} messages, got {len(got)} within {timeout} s")
            await asyncio.sleep(0.01)

    def client_context(self) -> ssl.SSLContext:
        return self.ca.client_context()


_running: set[SmtpServer] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    """Backstop: the Controller threads are daemons, but close the sockets explicitly."""
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()
