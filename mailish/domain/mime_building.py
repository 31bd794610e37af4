"""Byte-level building blocks for outgoing MIME: headers, encoded words, parameters, parts.

Why hand-written rather than `email.generator`: the outbox stores composed bytes once and
idempotency checks compare them, so the output must be a pure function of the inputs (no random
boundaries, no policy-dependent folding), and every line must stay within RFC 5322's limits
whatever the user typed. Everything here emits CRLF line endings, folds header lines at 78
columns where a token boundary allows it and never past 998 octets, and produces 7bit bodies
(quoted-printable or base64 whenever the text is not plain short-lined ASCII), so no relay has
to understand 8BITMIME. Header helpers take validated values (no CR, LF or NUL in names,
subjects or addresses); attachment names and media types are made safe here, because apps send
whatever the phone's file system holds.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
MAX_LINE = 998  # ... and MUST be at most 998 octets, CRLF excluded
_ENCODED_WORD_MAX = 75  # RFC 2047 §2
_PARAM_CHUNK = 60  # RFC 2231 continuation chunk, leaves room for `filename*12*=` and `;`
_PLAIN_PARAM = re.compile(r"[ !#-\[\]-~]{1,60}")  # printable ASCII without `"` and `\`
_SEVEN_BIT = re.compile(r"[\t\n -~]*")
_PLAIN_SUBJECT = re.compile(r"[!-~]{1,900}(?: [!-~]{1,900})*")
_PLAIN_NAME = re.compile(r"[ -~]{1,70}")
_SUBJECT_WORD = LINE - len("Subject: ")  # so the first encoded word fits on the first line
_NAME_WORD = 60  # encoded words in an address list, leaving room for the address after them
_MAX_FILENAME = 200
_MEDIA_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]{0,62})/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
# Controls, and bidi overrides that make "cod.exe" look like "exe.doc" in a file list.
_UNSAFE_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
_ATTRIBUTE_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
# Boundaries start with "=_", which quoted-printable and base64 output can never contain and
# which 7bit text parts are not allowed to contain (see `text_leaf`): no part can close early.
BOUNDARY_MARK = "=_"


@dataclass(frozen=True, slots=True)
class Leaf:
    """A single-part entity: its folded header lines and its transfer-encoded body."""

    headers: tuple[bytes, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Multipart:
    subtype: str
    parts: tuple[Leaf | Multipart, ...]
    params: tuple[str, ...] = ()  # extra Content-Type parameters, e.g. related's `type`


Part = Leaf | Multipart


def octets(text: str) -> int:
    return len(text.encode("utf-8"))


def fold(name: str, tokens: Iterable[str]) -> bytes:
    """One header field: tokens joined by single spaces, folded before a token that would push
    the line past 78 columns. Tokens are never split, so callers keep them short (each is at
    most a few hundred octets), which keeps every line under 998 octets."""
    lines: list[str] = []
    line, used = name + ":", False
    for token in tokens:
        if used and octets(line) + 1 + octets(token) > LINE:
            lines.append(line)
            line = " " + token
        else:
            line += " " + token
        used = True
    lines.append(line)
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"


def with_params(value: str, params: Sequence[str]) -> list[str]:
    """Tokens for `value; p1; p2` so `fold` may break the line after any semicolon."""
    items = [value, *params]
    return [item + ";" for item in items[:-1]] + [items[-1]]


def encoded_words(text: str, max_len: int = _ENCODED_WORD_MAX) -> list[str]:
    """RFC 2047 B-encoded utf-8 words of at most `max_len` characters, split between
    characters (never inside one), so a reader that decodes words one by one still works."""
    budget = (max_len - len("=?utf-8?B??=")) // 4 * 3
    words: list[str] = []
    chunk = b""
    for char in text:
        data = char.encode("utf-8")
        if chunk and len(chunk) + len(data) > budget:
            words.append(_word(chunk))
            chunk = b""
        chunk += data
    if chunk or not words:
        words.append(_word(chunk))
    return words


def _word(data: bytes) -> str:
    return "=?utf-8?B?" + base64.b64encode(data).decode("ascii") + "?="


def quoted(text: str) -> str:
    """An RFC 5322 quoted-string; the caller has ruled out control characters."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def param(key: str, value: str) -> list[str]:
    """A MIME parameter: quoted when short printable ASCII, else RFC 2231 percent-encoded utf-8
    (split into `key*N*` continuations between characters so each token stays short)."""
    if _PLAIN_PARAM.fullmatch(value) and "=?" not in value:
        return [f'{key}="{value}"']
    chunks = [""]
    for char in value:
        piece = "".join(chr(b) if b in _ATTRIBUTE_CHARS else f"%{b:02X}" for b in char.encode())
        if chunks[-1] and len(chunks[-1]) + len(piece) > _PARAM_CHUNK:
            chunks.append("")
        chunks[-1] += piece
    if len(chunks) == 1:
        return [f"{key}*=utf-8''{chunks[0]}"]
    rest = (f"{key}*{i}*={chunk}" for i, chunk in enumerate(chunks[1:], 1))
    return [f"{key}*0*=utf-8''{chunks[0]}", *rest]


def mailbox_tokens(name: str, address: str) -> list[str]:
    """`address`, or a display name (quoted when short printable ASCII, else encoded words)
    followed by `<address>`."""
    if not name:
        return [address]
    if _PLAIN_NAME.fullmatch(name) and "=?" not in name:
        return [quoted(name), f"<{address}>"]
    return [*encoded_words(name, _NAME_WORD), f"<{address}>"]


def address_header(name: str, mailboxes: Sequence[tuple[str, str]]) -> bytes:
    """A To/Cc-style header from (display name, address) pairs."""
    tokens: list[str] = []
    for display, address in mailboxes:
        if tokens:
            tokens[-1] += ","
        tokens.extend(mailbox_tokens(display, address))
    return fold(name, tokens)


def subject_header(subject: str) -> bytes:
    """Plain when it is printable ASCII that no reader could mistake for encoded words."""
    if _PLAIN_SUBJECT.fullmatch(subject) and "=?" not in subject:
        return fold("Subject", subject.split(" "))
    return fold("Subject", encoded_words(subject, _SUBJECT_WORD) if subject else [])


def safe_filename(value: str) -> str:
    """The base name only (apps send full paths), without controls or bidi overrides, at most
    200 characters keeping a short extension; empty means "send no filename"."""
    name = _UNSAFE_NAME.sub(" ", value).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in (".", ".."):
        return ""
    if len(name) > _MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        keep = dot + ext if stem and len(ext) <= 16 else ""
        name = name[: _MAX_FILENAME - len(keep)].rstrip() + keep
    return name


def safe_media_type(value: str) -> str:
    """type/subtype without parameters; malformed or composite types become octet-stream,
    because multipart and message bodies may not be base64-encoded (RFC 2046 §5)."""
    found = _MEDIA_TYPE.fullmatch(value.split(";", 1)[0].strip().lower())
    if found is None or found.group(1) in ("multipart", "message"):
        return "application/octet-stream"
    return found.group(0)


def attachment_leaf(
    *, filename: str, content_type: str, data: bytes, inline: bool, content_id: str | None
) -> Leaf:
    """A base64 part; `content_id` must already be a validated bare id."""
    name, ctype = safe_filename(filename), safe_media_type(content_type)
    disposition = "inline" if inline else "attachment"
    headers = [
        fold("Content-Type", with_params(ctype, param("name", name) if name else [])),
        fold(
            "Content-Disposition", with_params(disposition, param("filename", name) if name else [])
        ),
    ]
    if content_id is not None:
        headers.append(fold("Content-ID", [f"<{content_id}>"]))
    headers.append(b"Content-Transfer-Encoding: base64\r\n")
    return Leaf(tuple(headers), base64_body(data))


def canonical_text(text: str) -> str:
    """Line breaks as CRLF and a final line break, as RFC 5322 bodies and every MUA have it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n")


def _lines_fit(text: str) -> bool:
    return all(len(line) <= MAX_LINE for line in text.split("\r\n"))


def text_leaf(text: str, subtype: str) -> Leaf:
    """A text/{subtype} utf-8 part: 7bit when the text is short-lined printable ASCII (and holds
    no boundary mark), otherwise whichever of quoted-printable and base64 is shorter."""
    canonical = canonical_text(text)
    ctype = fold("Content-Type", with_params(f"text/{subtype}", ['charset="utf-8"']))
    if (
        _SEVEN_BIT.fullmatch(canonical.replace("\r\n", "\n"))
        and BOUNDARY_MARK not in canonical
        and _lines_fit(canonical)
    ):
        return Leaf((ctype, b"Content-Transfer-Encoding: 7bit\r\n"), canonical.encode("ascii"))
    data = canonical.encode("utf-8")
    qp = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True).replace(b"\n", b"\r\n")
    b64 = base64_body(data)
    if len(qp) <= len(b64):
        return Leaf((ctype, b"Content-Transfer-Encoding: quoted-printable\r\n"), qp)
    return Leaf((ctype, b"Content-Transfer-Encoding: base64\r\n"), b64)


def base64_body(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045 §6.8)."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def serialise(headers: Sequence[bytes], root: Part, seed: str) -> bytes:
    """The whole message: `headers` (already folded) then the MIME tree. Boundaries are
    `=_{seed}.{n}`, numbered in pre-order, so the same seed gives the same bytes."""
    numbers = itertools.count(1)

    def entity(head: Sequence[bytes], part: Part) -> Iterator[bytes]:
        yield from head
        if isinstance(part, Leaf):
            yield from part.headers
            yield b"\r\n"
            yield part.body
            return
        boundary = f"{BOUNDARY_MARK}{seed}.{next(numbers)}"
        params = [*part.params, f'boundary="{boundary}"']
        yield fold("Content-Type", with_params(f"multipart/{part.subtype}", params))
        yield b"\r\n"
        delimiter = b"--" + boundary.encode("ascii")
        for child in part.parts:
            yield delimiter + b"\r\n"
            yield from entity((), child)
            yield b"\r\n"  # belongs to the next delimiter, not to the part (RFC 2046 §5.1.1)
        yield delimiter + b"--\r\n"

    return b"".join(entity(headers, root))
