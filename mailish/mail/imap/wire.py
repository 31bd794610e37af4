"""IMAP response parsing: bytes in, plain Python values out, with hard bounds.

A response arrives as line segments and literals (``{N}`` announces N raw bytes). The reader
in ``connection`` collects them; this module turns them into values without recursion (an
explicit stack), so nesting depth costs memory linearly and is capped, and a hostile server
can never make us allocate more than the bytes it actually sent.

Values: atoms and quoted strings become ``str``, ``NIL`` becomes ``None``, literals stay
``bytes``, parenthesised lists become ``list``. A section such as ``BODY[HEADER.FIELDS
(SUBJECT)]<0>`` is one atom, as a client wants to see it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailish.domain.errors import ProtocolError

MAX_DEPTH = 64
# Lists in one response: an empty "()" is 2 bytes on the wire but a 56-byte list here, so a
# 1 MB line of them grew to 34 MB. BODYSTRUCTURE of a 2,000-part message needs ~10,000.
MAX_LISTS = 100_000
_SPECIAL = b'()[]{}" \r\n'
_ATOM = re.compile(rb"[^\x00-\x20\x7f(){}\"\[\]%*\\]+|\\\*|\\[A-Za-z0-9$]+|\*|%")
_NUMBER = re.compile(rb"\d+")
_QUOTED = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)

Value = str | bytes | None | list["Value"]


@dataclass(frozen=True, slots=True)
class Literal:
    """Marker for the n-th literal of a response while it is being assembled."""

    index: int


@dataclass(slots=True)
class RawResponse:
    """One response as read off the wire: text segments, with literals between them."""

    segments: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)

    @property
    def first_line(self) -> bytes:
        return self.segments[0] if self.segments else b""


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """``tag OK|NO|BAD [code] text`` or untagged ``* OK|NO|BAD|BYE|PREAUTH ...``."""

    tag: str | None
    status: str
    code: str | None
    code_args: tuple[Value, ...]
    text: str


@dataclass(frozen=True, slots=True)
class DataResponse:
    """Untagged data: ``* CAPABILITY ...``, ``* 12 EXISTS``, ``* 5 FETCH (...)`` ..."""

    kind: str  # upper-case: CAPABILITY, LIST, FETCH, EXISTS, ...
    number: int | None
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Continuation:
    text: str


Response = StatusResponse | DataResponse | Continuation
_STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


def _unescape(match: re.Match[bytes]) -> bytes:
    return match.group(1)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class _Tokens:
    """Cursor over a response's segments, yielding values; literals come from the side list."""

    def __init__(self, raw: RawResponse) -> None:
        self.raw = raw
        self.segment = 0
        self.buf = raw.segments[0] if raw.segments else b""
        self.pos = 0
        self.lists = 0

    def _skip_spaces(self) -> None:
        while self.pos < len(self.buf) and self.buf[self.pos] == 0x20:
            self.pos += 1

    def rest_of_line(self) -> bytes:
        self._skip_spaces()
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out

    def values(self, limit: int | None = None) -> list[Value]:
        """Parse values until the end of the response (or ``limit`` top-level values)."""
        out: list[Value] = []
        stack: list[list[Value]] = [out]
        while True:
            self._skip_spaces()
            if self.pos >= len(self.buf):
                if self.segment + 1 < len(self.raw.segments):
                    # a literal ended the previous segment; it sits between this and the next
                    self.segment += 1
                    stack[-1].append(self.raw.literals[self.segment - 1])
                    self.buf, self.pos = self.raw.segments[self.segment], 0
                    continue
                if len(stack) > 1:
                    raise ProtocolError("unbalanced parentheses in response")
                return out
            if limit is not None and len(stack) == 1 and len(out) >= limit:
                return out
            char = self.buf[self.pos]
            if char == 0x28:  # (
                if len(stack) > MAX_DEPTH:
                    raise ProtocolError("response nests too deeply")
                self.lists += 1
                if self.lists > MAX_LISTS:
                    raise ProtocolError(f"response has over {MAX_LISTS} lists")
                inner: list[Value] = []
                stack[-1].append(inner)
                stack.append(inner)
                self.pos += 1
            elif char == 0x29:  # )
                if len(stack) == 1:
                    raise ProtocolError("unbalanced ')' in response")
                stack.pop()
                self.pos += 1
            elif char == 0x22:  # "
                stack[-1].append(self._quoted())
            elif char == 0x7B:  # { — the literal's bytes follow this segment
                end = self.buf.find(b"}", self.pos)
                if end != len(self.buf) - 1:
                    raise ProtocolError("literal marker not at the end of a line")
                self.pos = len(self.buf)
            else:
                stack[-1].append(self._atom())

    def _quoted(self) -> str:
        # One regex match instead of a Python step per byte: a hostile 1 MB quoted string
        # blocked the event loop for 0.37 s.
        match = _QUOTED.match(self.buf, self.pos)
        if match is None:
            raise ProtocolError("unterminated quoted string")
        self.pos = match.end()
        body = match.group(1)
        return _text(_ESCAPED.sub(_unescape, body) if b"\\" in body else body)

    def _atom(self) -> Value:
        match = _ATOM.match(self.buf, self.pos)
        if match is None:
            raise ProtocolError(f"unexpected byte {self.buf[self.pos : self.pos + 1]!r}")
        end = match.end()
        # A section ("BODY[...]" or "BINARY[...]") and a partial ("<0>" or "<0.100>") are part
        # of the atom, brackets, spaces and all.
        if end < len(self.buf) and self.buf[end] == 0x5B:
            close = self.buf.find(b"]", end)
            if close < 0:
                raise ProtocolError("unterminated section in response")
            end = close + 1
            if end < len(self.buf) and self.buf[end] == 0x3C:
                close = self.buf.find(b">", end)
                if close < 0:
                    raise ProtocolError("unterminated partial in response")
                end = close + 1
        token = self.buf[self.pos : end]
        self.pos = end
        if token == b"NIL" or token == b"nil":
            return None
        return _text(token)


def parse(raw: RawResponse) -> Response:
    line = raw.first_line
    if line.startswith(b"+"):
        return Continuation(_text(line[1:].strip()))
    tokens = _Tokens(raw)
    head = tokens.values(limit=2)
    tag = head[0] if head else None
    word = head[1] if len(head) > 1 else None
    if not isinstance(tag, str) or not isinstance(word, str):
        raise ProtocolError(f"malformed response line {line[:80]!r}")
    upper = word.upper()
    if upper in _STATUS:
        return _status(None if tag == "*" else tag, upper, tokens)
    if tag != "*":
        raise ProtocolError(f"tagged response without a status: {line[:80]!r}")
    if _NUMBER.fullmatch(word.encode()):
        kind = (tokens.values(limit=1) or [None])[0]
        if not isinstance(kind, str):
            raise ProtocolError(f"numbered response without a kind: {line[:80]!r}")
        return DataResponse(kind.upper(), int(word), tuple(tokens.values()))
    if upper in {"CAPABILITY", "ENABLED"}:
        return DataResponse(upper, None, tuple(_text(tokens.rest_of_line()).split()))
    return DataResponse(upper, None, tuple(tokens.values()))


def _status(tag: str | None, status: str, tokens: _Tokens) -> StatusResponse:
    rest = tokens.rest_of_line()
    code: str | None = None
    code_args: tuple[Value, ...] = ()
    if rest.startswith(b"["):
        close = rest.find(b"]")
        if close < 0:
            raise ProtocolError("unterminated response code")
        inner = rest[1:close]
        name, _, args = inner.partition(b" ")
        code = _text(name).upper()
        if args:
            try:
                code_args = tuple(_Tokens(RawResponse([args])).values())
            except ProtocolError:
                code_args = (_text(args),)
        rest = rest[close + 1 :].lstrip(b" ")
    return StatusResponse(tag, status, code, code_args, _text(rest))


def literal_size(line: bytes, *, limit: int) -> int | None:
    """The size announced by a ``{N}`` (or ``{N+}``) at the end of a line, bounded by ``limit``."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    digits = line[start + 1 : -1].rstrip(b"+")
    if not any(48 <= b <= 57 for b in digits):
        return None  # text such as "* OK ready {mx1}": no size is claimed, so no literal
    if not digits.isdigit() or len(digits) > 12:
        raise ProtocolError(f"bad literal size {line[start:][:20]!r}")
    size = int(digits)
    if size > limit:
        raise ProtocolError(f"literal of {size} bytes exceeds the {limit}-byte limit")
    return size


def quote(text: str) -> bytes:
    """An IMAP quoted string; raises ValueError when only a literal can carry ``text``."""
    encoded = text.encode("utf-8")
    if any(b in encoded for b in (b"\r", b"\n", b"\x00")) or not encoded.isascii():
        raise ValueError("needs a literal")
    return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def flatten_pairs(values: Sequence[Value]) -> dict[str, Value]:
    """``(UID 4 FLAGS (\\Seen) BODY[] {..})`` → ``{"UID": "4", "FLAGS": [...], ...}``."""
    out: dict[str, Value] = {}
    for i in range(0, len(values) - 1, 2):
        key = values[i]
        if isinstance(key, str):
            out[key.upper()] = values[i + 1]
    return out
