"""IMAP modified UTF-7 mailbox names (RFC 3501 §5.1.3).

Mailbox names are identifiers: the decoded name is stored and shown, the wire form is sent back
to the server. The strict codec therefore accepts exactly one spelling per name, so that
``encode_mailbox_name(decode_mailbox_name(raw)) == raw`` for every accepted ``raw`` and two
different wire names can never decode to the same text. Non-canonical spellings (padding bits,
adjacent shifted runs, printable ASCII hidden in base64, a shifted run where ``&-`` belongs) are
rejected along with plain garbage, always as ``MailboxNameError`` and never as another exception.
U+0000 is refused both ways: PostgreSQL text cannot hold it, and no real server uses it.

Servers do send junk, and a sync must not stop because of one folder name, which is what the
lenient decoder is for: it returns the raw string unchanged whenever the strict decoder refuses.
"""

from __future__ import annotations

__all__ = [
    "MailboxNameError",
    "decode_mailbox_name",
    "decode_mailbox_name_lenient",
    "encode_mailbox_name",
]

# RFC 2152 base64 with "," in place of "/" and no "=" padding.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_INDEX = {char: value for value, char in enumerate(_ALPHABET)}


class MailboxNameError(ValueError):
    """A mailbox name that is not canonical modified UTF-7, or a name that cannot be encoded."""

    def __init__(self, reason: str, text: str, offset: int | None = None) -> None:
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"{reason}{where} in mailbox name {text!r}")
        self.reason = reason
        self.text = text
        self.offset = offset


def _is_direct(char: str) -> bool:
    """Printable US-ASCII stands for itself on the wire; everything else must be shifted."""
    return " " <= char <= "~"


def decode_mailbox_name(raw: str) -> str:
    """Decode a wire mailbox name, refusing anything but the canonical encoding."""
    out: list[str] = []
    pos = 0
    last_run_end = -1  # offset just after the previous non-empty shifted run
    while pos < len(raw):
        char = raw[pos]
        if char != "&":
            if not _is_direct(char):
                raise MailboxNameError(f"raw character {char!r} must be shifted", raw, pos)
            out.append(char)
            pos += 1
            continue
        end = pos + 1
        while end < len(raw) and raw[end] in _INDEX:
            end += 1
        if end == len(raw):
            raise MailboxNameError("unterminated '&' shift (missing '-')", raw, pos)
        if raw[end] != "-":
            raise MailboxNameError(f"invalid base64 character {raw[end]!r}", raw, end)
        if end == pos + 1:
            out.append("&")
        else:
            if pos == last_run_end:
                raise MailboxNameError("adjacent shifted runs must be merged", raw, pos)
            out.append(_decode_run(raw, pos + 1, end))
            last_run_end = end + 1
        pos = end + 1
    return "".join(out)


def _decode_run(raw: str, start: int, end: int) -> str:
    """Decode ``raw[start:end]``: modified base64 of UTF-16BE, minimal and complete."""
    data = bytearray()
    bits = 0
    nbits = 0
    for char in raw[start:end]:
        bits = ((bits << 6) | _INDEX[char]) & 0xFFFF
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            data.append((bits >> nbits) & 0xFF)
    # Minimal base64 leaves fewer than 6 spare bits, and those bits are zero.
    if nbits >= 6:
        raise MailboxNameError("truncated base64 run (dangling character)", raw, start)
    if bits & ((1 << nbits) - 1):
        raise MailboxNameError("non-zero padding bits in base64 run", raw, start)
    if len(data) % 2:
        raise MailboxNameError("odd number of bytes in UTF-16 run", raw, start)
    units = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    out: list[str] = []
    i = 0
    while i < len(units):
        unit = units[i]
        if 0xD800 <= unit <= 0xDBFF:
            low = units[i + 1] if i + 1 < len(units) else -1
            if not 0xDC00 <= low <= 0xDFFF:
                raise MailboxNameError("high surrogate without low surrogate", raw, start)
            out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
            i += 2
            continue
        if 0xDC00 <= unit <= 0xDFFF:
            raise MailboxNameError("low surrogate without high surrogate", raw, start)
        if _is_direct(chr(unit)):
            raise MailboxNameError(f"printable ASCII {chr(unit)!r} must not be shifted", raw, start)
        if unit == 0:
            raise MailboxNameError("NUL is not allowed in a mailbox name", raw, start)
        out.append(chr(unit))
        i += 1
    return "".join(out)


def encode_mailbox_name(name: str) -> str:
    """Encode text as a canonical wire mailbox name; lone surrogates cannot be encoded."""
    out: list[str] = []
    pending: list[str] = []
    for offset, char in enumerate(name):
        if _is_direct(char):
            if pending:
                out.append(_encode_run(pending))
                pending = []
            out.append("&-" if char == "&" else char)
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise MailboxNameError("lone surrogate cannot be encoded", name, offset)
        elif char == "\0":
            raise MailboxNameError("NUL is not allowed in a mailbox name", name, offset)
        else:
            pending.append(char)
    if pending:
        out.append(_encode_run(pending))
    return "".join(out)


def _encode_run(chars: list[str]) -> str:
    data = "".join(chars).encode("utf-16-be")
    encoded: list[str] = ["&"]
    bits = 0
    nbits = 0
    for byte in data:
        bits = ((bits << 8) | byte) & 0xFFFF
        nbits += 8
        while nbits >= 6:
            nbits -= 6
            encoded.append(_ALPHABET[(bits >> nbits) & 0x3F])
    if nbits:
        encoded.append(_ALPHABET[(bits << (6 - nbits)) & 0x3F])
    encoded.append("-")
    return "".join(encoded)


def decode_mailbox_name_lenient(raw: str) -> str:
    """Decode like ``decode_mailbox_name`` but return ``raw`` itself when it is not canonical.

    Meant for names as servers send them (some send UTF-8 or broken shifts); the raw string is
    still the name to use on the wire, so nothing is lost by showing it undecoded. Unlike the
    strict decoder this is not injective (``"&"`` and ``"&-"`` both give ``"&"``), so key folders
    by their raw name where uniqueness matters.
    """
    try:
        return decode_mailbox_name(raw)
    except MailboxNameError:
        return raw
