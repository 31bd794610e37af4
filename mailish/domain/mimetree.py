"""A bounded, lenient MIME structure walk over byte offsets into a raw message.

Why not `email.parser`: the stdlib feed parser copies every body into str, recurses without a
depth limit and has no part budget, so hostile or broken mail (5,000 parts, 500 levels of
nesting, 5 MB lines, no closing boundary) costs unbounded time and memory. This walk keeps
offsets into the original bytes, stops at `max_parts` / `max_depth` (recording a defect) and
tolerates missing boundaries and header separators. Part ids follow IMAP section numbering
("1", "2.1", ...) so the API can fetch a part with the same id. Pure: standard library only.
`email.message.Message` (compat32) is used only to interpret Content-Type/-Disposition
parameters, including RFC 2231 continuations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

from mailish.domain.charsets import clean_text, decode_text, decode_transfer, decode_words

_HEADER_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_BLANK_LINE = re.compile(rb"\n\r?\n")
# After "--boundary": "--" if closing, transport padding, then the end of the line (RFC 2046).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t\r]{0,78}(?:\n|\Z)")
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset=[\"']?([A-Za-z0-9._:-]{1,40})", re.I)
MAX_HEADERS = 1000
MAX_HEADER_LINES = 10_000
MAX_HEADER_VALUE = 256 * 1024
# The stdlib parameter parser (RFC 2231 continuations) is quadratic in the number of ";"; real
# Content-Type/-Disposition values are far below this.
MAX_PARAM_HEADER = 16 * 1024
MAX_BOUNDARY = 998  # RFC 2046 allows 70; a longer one is hostile, and it becomes a regex
# Work budgets in bytes: a multiple of the message size plus a floor, so small messages never
# hit them. Boundary scans cost nesting depth x span (50 open levels over 50 MB of newlines
# took 7 s); decoding a base64/quoted-printable message/rfc822 body copies it, and
# quoted-printable does not shrink, so 50 nested levels would cost 50x the message in memory.
SCAN_BUDGET = (16, 64 << 20)  # (x message size, + bytes)
DECODE_BUDGET = (2, 1 << 20)
MESSAGE_TYPES = ("message/rfc822", "message/global")

Headers = list[tuple[str, bytes]]  # (lower-cased name, unfolded raw value), in order


def header_text(value: bytes) -> str:
    """A structured header value (ids, parameters) as text; 8-bit bytes decoded leniently."""
    return clean_text(decode_text(value, None)[0]).strip()


@dataclass(slots=True)
class MimePart:
    part_id: str  # IMAP section number; "" for a top-level multipart
    buf: bytes  # the raw message, or a decoded message/rfc822 body
    headers: Headers
    start: int  # body offsets into buf
    end: int
    ctype: str  # lower-cased type/subtype
    mime: Message[str, str]  # carries Content-Type / Content-Disposition for parameter access
    children: list[MimePart] = field(default_factory=list)
    opaque: bool = False  # a container not descended into because a bound was hit

    def header(self, name: str) -> str:
        return next((header_text(v) for k, v in self.headers if k == name), "")

    def payload(self) -> tuple[bytes, str | None]:
        """The body with its Content-Transfer-Encoding undone, plus a defect if any."""
        cte = self.header("content-transfer-encoding")
        return decode_transfer(self.buf[self.start : self.end], cte)

    def text(self, defects: list[str]) -> str:
        """The body as text: transfer encoding, then charset (declared, <meta>, or guessed)."""
        data, defect = self.payload()
        param = self.mime.get_param("charset")
        charset = param[2] if isinstance(param, tuple) else param
        if (
            not charset
            and self.ctype == "text/html"
            and (meta := _META_CHARSET.search(data[:4096]))
        ):
            charset = meta.group(1).decode("ascii")
        text, defect2 = decode_text(data, charset or "us-ascii")
        defects.extend(d for d in (defect, defect2) if d)
        return clean_text(text.removeprefix("\ufeff"))

    def filename(self) -> str | None:
        """Content-Disposition filename or Content-Type name: RFC 2231 and RFC 2047 decoded."""
        for key, header in (("filename", "content-disposition"), ("name", "content-type")):
            value = self.mime.get_param(key, None, header)
            if isinstance(value, tuple):
                charset, _, raw = value
                try:
                    value = decode_text(raw.encode("latin-1"), charset or None)[0]
                except UnicodeEncodeError:
                    value = raw
            if value:  # keep only the base name: some clients send full Windows paths
                name = clean_text(decode_words(value)[0]).replace("\\", "/").rsplit("/", 1)[-1]
                if name := " ".join(name.split()):
                    return name
        return None


def read_headers(buf: bytes, start: int, end: int, defects: list[str]) -> tuple[Headers, int]:
    """Read and unfold the header block at buf[start:end]; returns headers and body offset."""
    fields: list[tuple[str, bytearray]] = []
    pos, lines, body = start, 0, end
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        line_end, nxt = (end, end) if nl < 0 else (nl, nl + 1)
        line = buf[pos : min(line_end, pos + MAX_HEADER_VALUE)].rstrip(b"\r")
        lines += 1
        if not line:
            body = nxt
            break
        if len(fields) >= MAX_HEADERS or lines > MAX_HEADER_LINES:
            defects.append("header-limit-exceeded")
            blank = _BLANK_LINE.search(buf, pos, end)
            body = blank.end() if blank else end
            break
        if line_end - pos > MAX_HEADER_VALUE:
            defects.append("header-too-long")
        if line[:1] in (b" ", b"\t"):
            if fields and len(fields[-1][1]) < MAX_HEADER_VALUE:
                fields[-1][1].extend(line)
            elif not fields:
                defects.append("header-first-line-continuation")
        elif m := _HEADER_NAME.match(line):
            fields.append((m.group(1).decode("ascii").lower(), bytearray(line[m.end() :])))
        elif not (lines == 1 and line.startswith(b"From ")):  # an mbox separator is skipped
            defects.append("header-missing-body-separator")
            body = pos
            break
        pos = nxt
    return [(name, bytes(value[:MAX_HEADER_VALUE])) for name, value in fields], body


def _delimiters(
    buf: bytes, start: int, end: int, boundary: bytes
) -> Iterator[tuple[int, int, bool]]:
    """Yield (line start, next line start, is_closing) for each boundary line in buf[start:end].

    One compiled pattern anchored on "\\n--boundary": candidates are rejected inside the regex
    engine, so a body made of near-miss lines ("--bX--bX..." or "\\n--bX\\n--bX...") costs
    one C-speed scan instead of a Python step per candidate.
    """
    needle = b"--" + boundary
    pos = start
    if buf.startswith(needle, start, end) and (
        m := _DELIMITER_TAIL.match(buf, start + len(needle), end)
    ):
        yield start, m.end(), m.group(1) is not None
        pos = m.end() - 1  # the newline ending this line may begin the next delimiter
    line = re.compile(rb"\n" + re.escape(needle) + _DELIMITER_TAIL.pattern)
    while m := line.search(buf, pos, end):
        yield m.start() + 1, m.end(), m.group(1) is not None
        pos = m.end() - 1


def _sniff_boundary(buf: bytes, start: int, end: int) -> bytes:
    """Guess a missing boundary parameter from the first line that starts with "--"."""
    if buf.startswith(b"--", start):
        first = start
    elif (found := buf.find(b"\n--", start, end)) >= 0:
        first = found + 1
    else:
        return b""
    nl = buf.find(b"\n", first, min(end, first + 200))
    return buf[first + 2 : nl].rstrip(b" \t\r") if nl >= 0 else b""


class _Walker:
    def __init__(self, max_parts: int, max_depth: int, defects: list[str], size: int) -> None:
        self.max_parts, self.max_depth, self.defects = max_parts, max_depth, defects
        self.count = 0
        self.budget = {
            "scan": SCAN_BUDGET[0] * size + SCAN_BUDGET[1],
            "decode": DECODE_BUDGET[0] * size + DECODE_BUDGET[1],
        }

    def afford(self, kind: str, size: int, node: MimePart) -> bool:
        """Charge ``size`` bytes to the budget ``kind``; once spent, containers stay opaque."""
        if size > self.budget[kind]:
            self.defects.append(f"max-{kind}-exceeded")
            node.opaque = True
            return False
        self.budget[kind] -= size
        return True

    def room(self) -> bool:
        if self.count < self.max_parts:
            return True
        self.defects.append("max-parts-exceeded")
        return False

    def entity(
        self, buf: bytes, span: tuple[int, int], part_id: str | None, prefix: str, depth: int,
        default: str,
    ) -> MimePart:  # fmt: skip
        """Parse one entity; part_id None means a message (top level or message/rfc822 body)."""
        self.count += 1
        headers, body = read_headers(buf, span[0], span[1], self.defects)
        mime: Message[str, str] = Message()
        mime.set_default_type(default)
        for name in ("content-type", "content-disposition"):
            value = next((v for k, v in headers if k == name), None)
            if value is not None:
                if len(value) > MAX_PARAM_HEADER:
                    self.defects.append(f"{name}-truncated")
                    value = value[:MAX_PARAM_HEADER]
                mime[name] = header_text(value)
        ctype = mime.get_content_type()
        is_multi = ctype.startswith("multipart/")
        if part_id is None:  # IMAP: a message's multipart body has its children at prefix+N
            part_id = prefix[:-1] if is_multi else prefix + "1"
        node = MimePart(part_id, buf, headers, body, span[1], ctype, mime)
        if (is_multi or ctype in MESSAGE_TYPES) and depth >= self.max_depth:
            self.defects.append("max-depth-exceeded")
            node.opaque = True
        elif is_multi:
            if self.afford("scan", span[1] - body, node):
                self.split(node, prefix, depth)
        elif ctype in MESSAGE_TYPES and self.room():
            inner, inner_span = buf, (body, span[1])
            if node.header("content-transfer-encoding").lower() in ("base64", "quoted-printable"):
                if not self.afford("decode", span[1] - body, node):  # decoded <= encoded size
                    return node
                inner = node.payload()[0]
                inner_span = (0, len(inner))
            child = self.entity(inner, inner_span, None, part_id + ".", depth + 1, "text/plain")
            node.children.append(child)
        return node

    def split(self, node: MimePart, prefix: str, depth: int) -> None:
        buf, start, end = node.buf, node.start, node.end
        param = node.mime.get_param("boundary")
        text = param[2] if isinstance(param, tuple) else param or ""
        boundary = text.encode("utf-8", "replace")
        if not boundary:
            self.defects.append("multipart-missing-boundary")
            boundary = _sniff_boundary(buf, start, end)
        if len(boundary) > MAX_BOUNDARY:
            self.defects.append("multipart-boundary-too-long")
            boundary = b""  # no delimiter can match: the body is shown as text
        bounds: list[tuple[int, int]] = []
        part_start, closed, full = -1, False, False
        for line, after, closing in _delimiters(buf, start, end, boundary) if boundary else ():
            if part_start >= 0:  # the line break before a delimiter belongs to the delimiter
                stop = line - (buf[line - 1 : line] == b"\n")
                bounds.append((part_start, stop - (buf[stop - 1 : stop] == b"\r")))
            part_start, closed = after, closing
            full = len(bounds) >= self.max_parts
            if closing or full:
                break
        if part_start < 0:
            self.defects.append("multipart-without-parts")
            node.ctype = "text/plain"  # show the body as text rather than lose it
            return
        if not closed and not full:
            self.defects.append("multipart-missing-closing-boundary")
            bounds.append((part_start, end))
        default = "message/rfc822" if node.ctype == "multipart/digest" else "text/plain"
        for i, span in enumerate(bounds, 1):
            if not self.room():
                break
            child_id = f"{prefix}{i}"
            node.children.append(
                self.entity(buf, span, child_id, child_id + ".", depth + 1, default)
            )


def build_tree(raw: bytes, *, max_parts: int, max_depth: int, defects: list[str]) -> MimePart:
    """The MIME tree of `raw`; bounds hit and malformations are appended to `defects`."""
    return _Walker(max_parts, max_depth, defects, len(raw)).entity(
        raw, (0, len(raw)), None, "", 0, "text/plain"
    )


def iter_parts(root: MimePart) -> Iterator[MimePart]:
    """Pre-order walk (without recursion) of the tree."""
    stack = [root]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))
