"""An asyncio TCP fault proxy: sits between mailish and a real server (Dovecot, PostgreSQL,
the SMTP server) and breaks the byte stream on purpose.

Why our own: the faults that matter are protocol-positioned ("cut at the middle byte of the
third FETCH literal", "hold the reply to COMMIT"), so a rule is anchored on a marker seen in
the stream, optionally in the *other* direction (watch the client's ``UID FETCH``, stall the
server's answer). Everything is per connection and per direction:

- ``cut``: forward up to the point, then close both sides;
- ``stall``: forward up to the point, then hold the stream for ``seconds`` or until
  ``rule.release()``;
- ``inject``: insert ``data`` at the point (``at_boundary`` moves the point to the end of the
  current IMAP response, skipping literals, so injected lines never land inside a literal);
- ``delay``: from the point on, sleep ``seconds`` before forwarding every chunk, and with
  ``piece`` forward at most that many bytes per write (a trickle that splits lines, CRLFs
  and literal headers across reads).

Rules are added and removed while connections run (``proxy.add`` / ``proxy.remove``); a
rule's ``triggered`` event tells the test that the fault is in place (e.g. the stream is now
held, so the test can expunge on the server and then release). ``open_connections`` and
``total_connections`` let tests assert that clients do not leak connections.

The proxy only moves bytes, so TLS passes through untouched: position-exact rules need a
plaintext protocol (IMAP on Dovecot's plain port, PostgreSQL over its socket), while cuts
and stalls by byte count or timing also work on TLS streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CHUNK = 64 * 1024
Action = Literal["cut", "stall", "inject", "delay"]
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}$")


class Direction(enum.Enum):
    UP = "client->server"
    DOWN = "server->client"

    @property
    def other(self) -> Direction:
        return Direction.DOWN if self is Direction.UP else Direction.UP


UP = Direction.UP
DOWN = Direction.DOWN


@dataclass(eq=False)
class Rule:
    """One fault. Without ``marker`` it is anchored at the start of the connection.

    The point where the action happens is found in three steps:
    1. the anchor: the start of the ``occurrence``-th ``marker`` in ``watch`` (default: the
       acting ``direction``); when ``watch`` is the other direction, the anchor is whatever
       the acting direction has read by then, so everything after the trigger is affected;
    2. ``skip_line``: move past the next CRLF (for ``BODY[] {123}`` that is the literal's
       first byte); then ``after`` bytes further;
    3. ``at_boundary``: move on to the end of the current IMAP response.

    ``times`` bounds on how many connections the rule fires (None: on every connection).
    """

    direction: Direction
    action: Action
    after: int = 0
    marker: bytes | None = None
    watch: Direction | None = None
    occurrence: int = 1
    skip_line: bool = False
    at_boundary: bool = False
    data: bytes = b""
    seconds: float | None = None
    piece: int | None = None
    times: int | None = 1
    fired: int = 0
    triggered: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.marker is not None and not self.marker:
            raise ValueError("empty marker")
        if self.skip_line and self.watch not in (None, self.direction):
            raise ValueError("skip_line needs the marker in the acting direction")
        if self.action == "inject" and not self.data:
            raise ValueError("inject needs data")
        if self.piece is not None and (self.action != "delay" or self.piece < 1):
            raise ValueError("piece is a positive size for delay rules")

    @property
    def watched(self) -> Direction:
        return self.watch or self.direction

    def release(self) -> None:
        """End every stall of this rule that waits for a release (now and later)."""
        self._released.set()

    def _budget_left(self) -> bool:
        return self.times is None or self.fired < self.times


@dataclass(eq=False)
class _Armed:
    """A rule's state on one connection."""

    rule: Rule
    seen: int = 0  # occurrences of the marker so far
    anchor: int | None = None  # absolute offset in the acting direction
    point: int | None = None  # resolved action point (absolute), None while unresolved
    done: bool = False
    active: bool = False  # a delay that has started


@dataclass(eq=False)
class _Pipe:
    direction: Direction
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    read_total: int = 0
    sent_total: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    tail: bytes = b""  # last bytes read, for markers that span chunks


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    number: int
    up_bytes: int
    down_bytes: int
    closed: bool


class _Connection:
    def __init__(self, proxy: FaultProxy, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.armed: list[_Armed] = [_Armed(r) for r in proxy.rules if r._budget_left()]
        self.pipes: dict[Direction, _Pipe] = {}
        self.closed = asyncio.Event()

    def adopt(self, rule: Rule) -> None:
        """A rule added while this connection runs applies to the bytes still to come."""
        self.armed.append(_Armed(rule))
        if rule.marker is None and rule.direction in self.pipes:
            pipe = self.pipes[rule.direction]
            self._arm(self.armed[-1], pipe.read_total)

    def stats(self) -> ConnectionStats:
        up, down = self.pipes.get(UP), self.pipes.get(DOWN)
        return ConnectionStats(
            self.number,
            up.read_total if up else 0,
            down.read_total if down else 0,
            self.closed.is_set(),
        )

    # -- markers ---------------------------------------------------------------------------

    def _scan(self, pipe: _Pipe, chunk: bytes) -> None:
        """Find markers in newly read bytes (before they are forwarded) and arm rules."""
        window = pipe.tail + chunk
        base = pipe.read_total - len(pipe.tail)  # absolute offset of window[0]
        for armed in self.armed:
            rule = armed.rule
            if armed.done or armed.anchor is not None or rule.marker is None:
                continue
            if rule.watched is not pipe.direction:
                continue
            start = 0
            while (found := window.find(rule.marker, start)) >= 0:
                start = found + 1
                if found + len(rule.marker) <= len(pipe.tail):
                    continue  # ends in the tail: counted with the previous chunk
                armed.seen += 1
                if armed.seen == rule.occurrence:
                    if rule.direction is pipe.direction:
                        self._arm(armed, base + found)
                    else:
                        self._arm(armed, self.pipes[rule.direction].read_total)
                    break
        longest = max((len(a.rule.marker or b"") for a in self.armed), default=1)
        pipe.tail = window[-(longest - 1) :] if longest > 1 else b""

    def _arm(self, armed: _Armed, anchor: int) -> None:
        if not armed.rule._budget_left():
            armed.done = True
            return
        armed.anchor = anchor
        if not armed.rule.skip_line and not armed.rule.at_boundary:
            armed.point = anchor + armed.rule.after

    def _resolve(self, pipe: _Pipe, armed: _Armed) -> None:
        """Turn an anchor into a point once the buffer holds enough bytes to decide."""
        rule = armed.rule
        assert armed.anchor is not None
        position = armed.anchor
        if rule.skip_line:
            crlf = self._find(pipe, b"\r\n", position)
            if crlf is None:
                return
            position = crlf + 2
        position += rule.after
        if rule.at_boundary:
            boundary = self._boundary(pipe, position)
            if boundary is None:
                return
            position = boundary
        armed.point = position

    @staticmethod
    def _find(pipe: _Pipe, needle: bytes, start: int) -> int | None:
        offset = max(start, pipe.sent_total) - pipe.sent_total
        index = pipe.buffer.find(needle, offset)
        return None if index < 0 else pipe.sent_total + index

    def _boundary(self, pipe: _Pipe, start: int) -> int | None:
        """The absolute offset just past the IMAP response that ``start`` lies in."""
        position = start
        while True:
            crlf = self._find(pipe, b"\r\n", position)
            if crlf is None:
                return None
            line_start = pipe.buffer.rfind(b"\n", 0, crlf - pipe.sent_total) + 1
            line = bytes(pipe.buffer[line_start : crlf - pipe.sent_total])
            literal = _LITERAL_AT_END.search(line)
            if literal is None:
                return crlf + 2
            position = crlf + 2 + int(literal[1])
            if position > pipe.read_total:
                return None

    # -- forwarding ------------------------------------------------------------------------

    async def pump(self, pipe: _Pipe) -> None:
        try:
            while True:
                chunk = await pipe.reader.read(CHUNK)
                if chunk:
                    self._scan(pipe, chunk)
                    pipe.buffer += chunk
                    pipe.read_total += len(chunk)
                if not await self._flush(pipe, final=not chunk) or not chunk:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self.close()

    async def _flush(self, pipe: _Pipe, *, final: bool = False) -> bool:
        """Forward what may go and run the actions that are due; False once cut.

        Bytes go up to the nearest pending action point; a rule whose point is still
        unknown (its marker was seen, the line end or response end not yet) holds the
        stream at its anchor until more bytes arrive.
        """
        while True:
            mine = [a for a in self.armed if not a.done and a.rule.direction is pipe.direction]
            for armed in mine:
                if armed.anchor is not None and armed.point is None:
                    self._resolve(pipe, armed)
            delaying = [a for a in mine if a.active]
            limit = pipe.read_total
            due: _Armed | None = None
            for armed in mine:
                if armed.active:
                    continue
                if armed.anchor is not None and armed.point is None:
                    limit = min(limit, max(armed.anchor, pipe.sent_total))
                elif armed.point is not None and armed.point <= limit:
                    limit = max(armed.point, pipe.sent_total)
                    due = armed
            count = limit - pipe.sent_total
            if count > 0:
                if delaying:
                    await asyncio.sleep(max(a.rule.seconds or 0.0 for a in delaying))
                    count = min([count, CHUNK, *(a.rule.piece or CHUNK for a in delaying)])
                self._send(pipe, bytes(pipe.buffer[:count]))
                del pipe.buffer[:count]
                pipe.sent_total += count
                await self._drain(pipe)
                continue
            if due is None or (final and not pipe.buffer):
                # Everything read is forwarded, or a rule waits for more bytes. At the end of
                # the stream nothing is left to act on: the rule stays for other connections.
                return True
            if not await self._act(pipe, due):
                return False

    async def _act(self, pipe: _Pipe, armed: _Armed) -> bool:
        rule = armed.rule
        if rule.action == "delay":
            armed.active = True  # from here on, every chunk waits
            rule.fired += 1
            rule.triggered.set()
            return True
        armed.done = True
        if not rule._budget_left():
            return True  # another connection used up the rule meanwhile
        rule.fired += 1
        await self._drain(pipe)
        if rule.action == "cut":
            self.close()
            rule.triggered.set()
            return False
        if rule.action == "inject":
            self._send(pipe, rule.data)
            await self._drain(pipe)
            rule.triggered.set()
            return True
        rule.triggered.set()  # stall: held from here until released, timed out, or closed
        waits = [
            asyncio.ensure_future(rule._released.wait()),
            asyncio.ensure_future(self.closed.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=rule.seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return not self.closed.is_set()

    @staticmethod
    def _send(pipe: _Pipe, data: bytes) -> None:
        if not pipe.writer.is_closing():
            pipe.writer.write(data)

    @staticmethod
    async def _drain(pipe: _Pipe) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if not pipe.writer.is_closing():
                await pipe.writer.drain()

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.writer.close()
        self.closed.set()


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to ``upstream``: (host, port) or a Unix socket path."""

    def __init__(self, upstream: tuple[str, int] | Path) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.port = 0
        self.total_connections = 0
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.history: list[_Connection] = []

    @property
    def open_connections(self) -> int:
        return len(self._live)

    def stats(self) -> list[ConnectionStats]:
        return [c.stats() for c in self.history]

    # -- rules -----------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Apply ``rule`` to new connections and to the ones open now."""
        self.rules.append(rule)
        for conn in self._live:
            conn.adopt(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        """Stop applying ``rule`` (stalls it holds are released)."""
        if rule in self.rules:
            self.rules.remove(rule)
        for conn in self._live:
            conn.armed = [a for a in conn.armed if a.rule is not rule]
        rule.release()

    def clear(self) -> None:
        for rule in list(self.rules):
            self.remove(rule)

    def cut_all(self) -> None:
        """Close every open connection now (a server or network crash, from mailish's view)."""
        for conn in list(self._live):
            conn.close()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=CHUNK)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for rule in self.rules:
            rule.release()
        self.cut_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.upstream, Path):
            return await asyncio.open_unix_connection(str(self.upstream), limit=CHUNK)
        host, port = self.upstream
        return await asyncio.open_connection(host, port, limit=CHUNK)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(self, next(self._numbers))
        self.total_connections += 1
        self._live.add(conn)
        self.history.append(conn)
        try:
            try:
                up_reader, up_writer = await self._connect_upstream()
            except OSError:
                writer.close()
                return
            conn.pipes[UP] = _Pipe(UP, reader, up_writer)
            conn.pipes[DOWN] = _Pipe(DOWN, up_reader, writer)
            for armed in conn.armed:
                if armed.rule.marker is None:
                    conn._arm(armed, 0)
            if conn.closed.is_set():  # cut_all() while connecting
                conn.close()
                return
            await asyncio.gather(conn.pump(conn.pipes[UP]), conn.pump(conn.pipes[DOWN]))
        finally:
            conn.close()
            for w in (writer, *(p.writer for p in conn.pipes.values())):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2.0)
            self._live.discard(conn)
            self._tasks.discard(task)
