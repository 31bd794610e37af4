"""One IMAP connection: TLS or STARTTLS done strictly, tagged commands with timeouts.

Security rules, enforced here and nowhere else:

- Implicit TLS verifies the certificate and host name (``mail.tls``).
- STARTTLS is mandatory once asked for: a server that does not advertise it, answers NO, or
  greets with PREAUTH (already authenticated, so STARTTLS is impossible) is refused before
  any credential is sent. Everything the server said before TLS is discarded, and bytes
  that arrive between "OK Begin TLS" and the handshake (a plaintext injection) abort.
- Plaintext is used only when the dev-only allowance is on.

Every read and every command has a deadline. Untagged responses that arrive while a command
runs but do not belong to it (EXISTS, EXPUNGE, FETCH of flags, VANISHED, ALERT) are kept in
``unsolicited`` for the session to act on, never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import ssl
import sys
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
from mailish.mail.imap import wire
from mailish.mail.tls import client_context, describe_tls_failure

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
MAX_LINE = 1 << 20  # lines are read in pieces of at most this (the stream's buffer limit)
# One text line in all: a plain (non-ESEARCH) UID SEARCH answers a folder of N messages in
# one line of ~8N bytes, so a 200,000-message folder needs more than a MiB.
MAX_LONG_LINE = 64 << 20
MAX_LITERAL = 64 << 20
MAX_RESPONSE = 256 << 20
# Everything one command (or one IDLE) may receive, its own data and unsolicited responses
# alike. The largest legitimate answers (a fetch piece of big mail, FLAGS of a huge folder)
# stay far below; a hostile server streaming responses until the timeout does not.
MAX_COMMAND_BYTES = 256 << 20
# Unsolicited responses kept for the session between its looks at them. Past this, they are
# replaced by one OVERFLOW marker: the session then re-syncs everything, which loses nothing.
MAX_UNSOLICITED = 10_000
MAX_UNSOLICITED_BYTES = 16 << 20
OVERFLOW = wire.DataResponse("OVERFLOW", None, ())
# Literals in one response. Each piece costs objects beyond its bytes, so a server ending
# every line in "{0}" could otherwise grow one response until the timeout.
MAX_LITERALS = 10_000
TLS_READ_BUFFER = 16 << 10  # see _share_tls_read_buffer


class ImapError(PermanentError):
    """The server answered NO or BAD to a command."""

    def __init__(self, command: str, response: wire.StatusResponse) -> None:
        super().__init__(f"IMAP {command} failed: {response.status} {response.text}")
        self.command = command
        self.response = response


class ConnectionLost(TransientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, delay=2.0)


class StartTlsRefused(TLSError):
    """The server would not (or pretended to) switch to TLS: never continue in plaintext."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    endpoint: Endpoint
    ca_files: tuple[Path, ...] = ()
    allow_plaintext: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_literal: int = MAX_LITERAL
    allow_private_hosts: bool = False


@dataclass(slots=True)
class Result:
    """The tagged completion plus the untagged data that belongs to the command."""

    status: wire.StatusResponse
    data: list[wire.DataResponse] = field(default_factory=list)

    def of(self, kind: str) -> list[wire.DataResponse]:
        return [d for d in self.data if d.kind == kind]


class ImapConnection:
    def __init__(
        self, settings: ImapSettings, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.settings = settings
        self._reader = reader
        self._writer = writer
        self._tags = itertools.count(1)
        self.capabilities: frozenset[str] = frozenset()
        #: Responses that arrived outside their command (see MAX_UNSOLICITED); the session
        #: takes them out as it acts on them.
        self.unsolicited: deque[wire.Response] = deque()
        self._unsolicited_bytes = 0  # an upper bound of the bytes held in ``unsolicited``
        self._received = 0  # bytes of all responses read so far
        self._last_size = 0  # bytes of the last response read
        self.authenticated = False
        self.mid_event = False
        self._lock = asyncio.Lock()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: ImapSettings) -> ImapConnection:
        endpoint = settings.endpoint
        check_policy(endpoint, allow_plaintext=settings.allow_plaintext)
        context = client_context(settings.ca_files)
        address = await resolve_checked(
            endpoint.host, endpoint.port, allow_private=settings.allow_private_hosts
        )
        try:
            async with asyncio.timeout(settings.timeout):
                reader, writer = await asyncio.open_connection(
                    address,
                    endpoint.port,
                    ssl=context if endpoint.security is Security.TLS else None,
                    server_hostname=endpoint.host if endpoint.security is Security.TLS else None,
                    limit=MAX_LINE,
                )
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise describe_tls_failure(exc, endpoint.host) from exc
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"IMAP {endpoint}: cannot connect ({exc or 'timeout'})") from exc
        _share_tls_read_buffer(writer)
        conn = cls(settings, reader, writer)
        try:
            await conn._greet_and_secure(context)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _greet_and_secure(self, context: ssl.SSLContext) -> None:
        greeting = await self._response()
        if not isinstance(greeting, wire.StatusResponse) or greeting.tag is not None:
            raise ProtocolError("IMAP server sent no greeting")
        if greeting.status == "BYE":
            raise TransientError(f"IMAP server refused the connection: {greeting.text}", delay=30)
        starttls = self.settings.endpoint.security is Security.STARTTLS
        if greeting.status == "PREAUTH":
            if starttls:
                raise StartTlsRefused("IMAP server greeted PREAUTH; STARTTLS impossible, refusing")
            self.authenticated = True
        if starttls:
            await self._starttls(context)
        elif greeting.code == "CAPABILITY":
            self.capabilities = _caps(greeting.code_args)
        if not self.capabilities:
            await self.refresh_capabilities()

    async def _starttls(self, context: ssl.SSLContext) -> None:
        result = await self.command("CAPABILITY")
        caps = _caps(v for d in result.of("CAPABILITY") for v in d.values)
        if "STARTTLS" not in caps:
            raise StartTlsRefused("IMAP server does not offer STARTTLS; refusing plaintext")
        try:
            await self.command("STARTTLS")
        except ImapError as exc:
            raise StartTlsRefused(f"IMAP server refused STARTTLS: {exc.response.text}") from exc
        if self._reader._buffer:  # type: ignore[attr-defined]
            raise StartTlsRefused("IMAP server sent data before the TLS handshake; aborting")
        self.unsolicited.clear()
        host = self.settings.endpoint.host
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._writer.start_tls(context, server_hostname=host)
            _share_tls_read_buffer(self._writer)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise describe_tls_failure(exc, host) from exc
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"IMAP {host}: TLS handshake failed ({exc or 'timeout'})") from exc
        self.capabilities = frozenset()  # anything learnt in plaintext is void

    async def refresh_capabilities(self) -> frozenset[str]:
        result = await self.command("CAPABILITY")
        self.capabilities = _caps(v for d in result.of("CAPABILITY") for v in d.values)
        return self.capabilities

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # -- authentication ------------------------------------------------------------------

    async def login(self, login: Login) -> None:
        if self.authenticated:
            return
        try:
            if isinstance(login, OAuth2Login):
                result = await self._authenticate("XOAUTH2", login.xoauth2().encode())
            elif self.has("AUTH=PLAIN") and not self.has("LOGINDISABLED"):
                secret = f"\0{login.username}\0{login.password}".encode()
                result = await self._authenticate("PLAIN", secret)
            elif isinstance(login, PasswordLogin) and not self.has("LOGINDISABLED"):
                result = await self.command(
                    "LOGIN", _astring(login.username), _astring(login.password), secret=True
                )
            else:
                raise AuthError("IMAP server offers no login method we can use")
        except ImapError as exc:
            raise AuthError(f"IMAP login refused: {exc.response.text}") from exc
        self.authenticated = True
        if result.status.code == "CAPABILITY":
            self.capabilities = _caps(result.status.code_args)
        else:
            await self.refresh_capabilities()

    async def _authenticate(self, mechanism: str, initial: bytes) -> Result:
        """SASL with one client message. A server error challenge gets the empty response
        RFC 4954/7628 require, so a rejected XOAUTH2 token ends in NO instead of a hang."""
        payload = base64.b64encode(initial)
        if self.has("SASL-IR"):
            return await self.command("AUTHENTICATE", mechanism.encode(), payload, secret=True)
        return await self.command(
            "AUTHENTICATE", mechanism.encode(), continuation=payload, secret=True
        )

    # -- commands ------------------------------------------------------------------------

    async def command(
        self,
        name: str,
        *args: bytes | str,
        continuation: bytes | None = None,
        literal: bytes | None = None,
        time_limit: float | None = None,
        secret: bool = False,
    ) -> Result:
        """Send one command and collect its responses until the tagged completion.

        ``literal`` is sent as the command's final argument (APPEND), using LITERAL+ when
        offered. ``continuation`` answers the first ``+`` (SASL). Raises ``ImapError`` on
        NO/BAD, ``ConnectionLost`` on EOF or timeout (the connection is then unusable).
        """
        async with self._lock:
            tag = f"M{next(self._tags)}"
            parts = [tag.encode(), name.encode()]
            parts += [a.encode() if isinstance(a, str) else a for a in args]
            line = b" ".join(parts)
            try:
                async with asyncio.timeout(time_limit or self.settings.timeout):
                    return await self._exchange(tag, name, line, continuation, literal)
            except TimeoutError as exc:
                self.abort()
                raise ConnectionLost(f"IMAP {name} timed out") from exc
            finally:
                if not secret:
                    log.debug("imap %s %s", tag, name)

    async def _exchange(
        self, tag: str, name: str, line: bytes, continuation: bytes | None, literal: bytes | None
    ) -> Result:
        if literal is not None:
            plus = self.has("LITERAL+") or (self.has("LITERAL-") and len(literal) <= 4096)
            self._send(line + b" {%d%s}\r\n" % (len(literal), b"+" if plus else b""))
            if not plus:
                await self._await_continuation(name)
            self._send(literal + b"\r\n")
        else:
            self._send(line + b"\r\n")
        result = Result(wire.StatusResponse(None, "", None, (), ""))
        answered = False
        start = self._received
        while True:
            response = await self._response(budget_from=start)
            if isinstance(response, wire.Continuation):
                # SASL: our one message, then an empty line to any further challenge
                self._send((continuation if not answered and continuation else b"") + b"\r\n")
                answered = True
                continue
            if isinstance(response, wire.StatusResponse):
                if response.tag == tag:
                    result.status = response
                    if response.status != "OK":
                        raise ImapError(name, response)
                    return result
                if response.status == "BYE":
                    self.abort()
                    raise ConnectionLost(f"IMAP server closed the connection: {response.text}")
                self._set_aside(response)
                continue
            if response.kind in _UNSOLICITED_KINDS and response.kind not in _OWN.get(name, ()):
                self._set_aside(response)
            else:
                result.data.append(response)

    async def _await_continuation(self, name: str) -> None:
        start = self._received
        while True:
            response = await self._response(budget_from=start)
            if isinstance(response, wire.Continuation):
                return
            if isinstance(response, wire.StatusResponse) and response.tag is not None:
                raise ImapError(name, response)
            self._set_aside(response)

    def _set_aside(self, response: wire.Response) -> None:
        """Keep ``response`` for the session; past MAX_UNSOLICITED(_BYTES), only OVERFLOW."""
        if not self.unsolicited:
            self._unsolicited_bytes = 0
        elif self.unsolicited[-1] is OVERFLOW:
            return
        self._unsolicited_bytes += self._last_size
        if (
            len(self.unsolicited) >= MAX_UNSOLICITED
            or self._unsolicited_bytes > MAX_UNSOLICITED_BYTES
        ):
            self.unsolicited.clear()
            self.unsolicited.append(OVERFLOW)
            log.warning("IMAP server sent too many unsolicited responses; resyncing instead")
            return
        self.unsolicited.append(response)

    def _send(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionLost("IMAP connection is closed")
        self._writer.write(data)

    async def _response(
        self, first: bytes | None = None, *, budget_from: int | None = None
    ) -> wire.Response:
        """The next response, parsed. One we cannot parse leaves the stream out of step, so
        the connection is closed with the error rather than reused. With ``budget_from`` (the
        ``_received`` count when a command began), more than MAX_COMMAND_BYTES since then
        is a protocol error too."""
        raw = await self._read_response(first)
        try:
            if budget_from is not None and self._received - budget_from > MAX_COMMAND_BYTES:
                raise ProtocolError(f"IMAP server sent over {MAX_COMMAND_BYTES} bytes to a command")
            return wire.parse(raw)
        except ProtocolError:
            self.abort()
            raise

    async def _read_response(self, first: bytes | None = None) -> wire.RawResponse:
        """Read one response: a line, and for each ``{N}`` at its end, N bytes and a line more.
        ``first`` is a line already read (by ``wait_event``)."""
        raw = wire.RawResponse()
        total = 0
        try:
            async with asyncio.timeout(self.settings.timeout):
                while True:
                    if first is not None:
                        line, first = first[:-2], None
                    else:
                        line = await self._read_line()
                    total += len(line)
                    size = wire.literal_size(line, limit=self.settings.max_literal)
                    raw.segments.append(line)
                    if size is None:
                        self._received += total
                        self._last_size = total
                        return raw
                    total += size
                    if total > MAX_RESPONSE:
                        raise ProtocolError(f"response exceeds {MAX_RESPONSE} bytes")
                    if len(raw.literals) >= MAX_LITERALS:
                        raise ProtocolError(f"response has over {MAX_LITERALS} literals")
                    raw.literals.append(await self._reader.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            self.abort()
            raise ConnectionLost("IMAP server closed the connection mid-response") from exc
        except (ConnectionError, ssl.SSLError) as exc:
            self.abort()
            raise ConnectionLost(f"IMAP connection lost ({exc})") from exc
        except TimeoutError as exc:
            self.abort()
            raise ConnectionLost("IMAP server stopped answering (read timeout)") from exc
        except ProtocolError:
            self.abort()
            raise

    async def _read_line(self) -> bytes:
        """One line without its CRLF, read in pieces of at most MAX_LINE (the stream's limit)
        so that one up to MAX_LONG_LINE is fine; longer is a ProtocolError."""
        pieces: list[bytes] = []
        size = 0
        while True:
            try:
                piece = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await self._reader.readexactly(exc.consumed)
            size += len(piece)
            if size > MAX_LONG_LINE + 2:
                raise ProtocolError(f"IMAP response line longer than {MAX_LONG_LINE} bytes")
            pieces.append(piece)
            if piece.endswith(b"\r\n"):
                return (b"".join(pieces) if len(pieces) > 1 else piece)[:-2]

    async def wait_event(self, wait: float) -> wire.Response | None:
        """Wait up to ``wait`` seconds for one unsolicited response (NOTIFY, IDLE, EXISTS).

        ``readuntil`` consumes nothing until a whole line is there, so timing out (or being
        cancelled) while waiting never loses half a response; once a line has arrived,
        ``mid_event`` is true and the caller must let the read finish instead of cancelling.
        """
        async with self._lock:
            first: bytes | None
            try:
                first = await asyncio.wait_for(self._reader.readuntil(b"\r\n"), wait)
            except asyncio.LimitOverrunError:
                first = None  # a line too long for one piece has begun: read it whole below
            except TimeoutError:
                return None
            except asyncio.IncompleteReadError as exc:
                self.abort()
                raise ConnectionLost("IMAP server closed the connection") from exc
            except (ConnectionError, ssl.SSLError) as exc:
                self.abort()
                raise ConnectionLost(f"IMAP connection lost ({exc})") from exc
            self.mid_event = True  # from here on, cancelling would lose protocol sync
            try:
                response = await self._response(first)
            finally:
                self.mid_event = False
            if isinstance(response, wire.StatusResponse) and response.status == "BYE":
                self.abort()
                raise ConnectionLost(f"IMAP server closed the connection: {response.text}")
            return response

    async def idle_begin(self) -> str:
        """Send IDLE and wait for the server's go-ahead; returns the tag for ``idle_end``."""
        async with self._lock:
            tag = f"M{next(self._tags)}"
            self._send(tag.encode() + b" IDLE\r\n")
            try:
                await self._await_continuation("IDLE")
            except TimeoutError as exc:
                self.abort()
                raise ConnectionLost("IMAP IDLE was not acknowledged") from exc
            return tag

    async def idle_end(self, tag: str) -> list[wire.Response]:
        """Send DONE and collect everything up to IDLE's completion."""
        async with self._lock:
            self._send(b"DONE\r\n")
            seen: list[wire.Response] = []
            start = self._received
            while True:
                response = await self._response(budget_from=start)
                if isinstance(response, wire.StatusResponse) and response.tag == tag:
                    if response.status != "OK":
                        raise ImapError("IDLE", response)
                    return seen
                seen.append(response)

    # -- closing -------------------------------------------------------------------------

    async def logout(self) -> None:
        try:
            await self.command("LOGOUT", time_limit=5.0)
        except MailishError:
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        self.abort()
        try:
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass

    def abort(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()


# Responses a server may send at any time that describe mailbox state, not command output.
# With NOTIFY (RFC 5465) that includes STATUS and LIST of other mailboxes: kept in a command's
# data, they were lost until the next full round.
_UNSOLICITED_KINDS = frozenset(
    {"EXISTS", "EXPUNGE", "RECENT", "FETCH", "VANISHED", "STATUS", "LIST"}
)
# ...unless the command asked for them.
_OWN: dict[str, frozenset[str]] = {
    "SELECT": frozenset({"EXISTS", "RECENT", "FETCH", "VANISHED"}),
    "EXAMINE": frozenset({"EXISTS", "RECENT", "FETCH", "VANISHED"}),
    "UID FETCH": frozenset({"FETCH", "VANISHED"}),
    "FETCH": frozenset({"FETCH"}),
    "UID STORE": frozenset({"FETCH"}),
    "STORE": frozenset({"FETCH"}),
    "UID EXPUNGE": frozenset({"EXPUNGE", "VANISHED"}),
    "EXPUNGE": frozenset({"EXPUNGE", "VANISHED"}),
    "UID MOVE": frozenset({"EXPUNGE", "VANISHED"}),
    "NOOP": frozenset({"EXISTS", "EXPUNGE", "RECENT", "FETCH", "VANISHED"}),
    "LIST": frozenset({"LIST", "STATUS"}),  # RETURN (STATUS ...): LIST-STATUS, RFC 5819
    "STATUS": frozenset({"STATUS"}),
}


def _share_tls_read_buffer(writer: asyncio.StreamWriter) -> None:
    """Point asyncio's TLS read buffer for this connection at the thread's shared one.

    CPython's ``sslproto.SSLProtocol`` reads the socket into a zero-filled 256 KiB bytearray
    (``max_size``) made per connection, so every idle account cost 256 KB of resident memory
    before anything else (the scale benchmark measured ~390 KB per account); a private
    16 KiB one still cost 16 KB, a sixth of an idle account. The buffer only carries bytes
    from ``recv_into`` to ``buffer_updated``, which copies them into the SSL object's memory
    BIO before returning, all in one synchronous callback of the selector loop: no two
    connections of a thread can be inside that window at once, so they can share one buffer.
    A TLS record holds at most 16 KiB, so reads still take whole records. Private attributes
    of the stdlib: if they are not there (another Python or event loop, a plaintext
    transport), nothing changes.
    """
    protocol = getattr(writer.transport, "_ssl_protocol", None)
    if protocol is None or not isinstance(getattr(protocol, "_ssl_buffer", None), bytearray):
        return
    if not isinstance(asyncio.get_running_loop(), asyncio.selector_events.BaseSelectorEventLoop):
        return  # a proactor reads asynchronously into the buffer: keep a private one
    protocol.max_size = TLS_READ_BUFFER
    protocol._ssl_buffer, protocol._ssl_buffer_view = _shared_read_buffer()


_read_buffers = threading.local()


def _shared_read_buffer() -> tuple[bytearray, memoryview]:
    """This thread's TLS read buffer (threads each run their own loop; recv_into releases
    the GIL, so two threads must never share one)."""
    pair: tuple[bytearray, memoryview] | None = getattr(_read_buffers, "pair", None)
    if pair is None:
        buffer = bytearray(TLS_READ_BUFFER)
        pair = _read_buffers.pair = (buffer, memoryview(buffer))
    return pair


_capability_sets: dict[frozenset[str], frozenset[str]] = {}


def _caps(values: Iterable[wire.Value]) -> frozenset[str]:
    """The capability set, shared by every connection that got the same one: a worker holds
    thousands of connections to a handful of servers, and a set of ~40 names is ~2 KB."""
    caps = frozenset(sys.intern(v.upper()) for v in values if isinstance(v, str))
    shared = _capability_sets.get(caps)
    if shared is not None:
        return shared
    if len(_capability_sets) >= 1024:  # a hostile server varying its list cannot grow this
        _capability_sets.clear()
    _capability_sets[caps] = caps
    return caps


def _astring(text: str) -> bytes:
    """Quoted when possible; non-ASCII credentials go as a synchronising-free literal+."""
    try:
        return wire.quote(text)
    except ValueError:
        raise PermanentError("IMAP LOGIN cannot carry this password; use AUTHENTICATE") from None
