"""What a synced message is, independent of how it was fetched or where it is stored.

The stable id survives moves and UIDVALIDITY resets: the server's EMAILID (RFC 8474) when it
has one, else Gmail's X-GM-MSGID, else a content key over the headers that identify a message
(Message-ID, Date, From, Subject) and its size. The content key is computed from the header
block alone, so a UIDVALIDITY remap can match messages by fetching headers, not bodies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from mailish.domain.parsing import Address, AttachmentInfo, ParsedMessage, parse_message

KEY_FIELDS = (b"message-id", b"date", b"from", b"subject")
HEADER_FIELDS_ARG = b"MESSAGE-ID DATE FROM SUBJECT"
_FOLD = re.compile(rb"\r?\n[ \t]+")
_SPACE = re.compile(rb"\s+")
# Indexing cost grows with text length (to_tsvector takes ~1 ms per 12 KB); it runs in a
# background indexer, and 16 KB of body text covers what people search for.
SEARCH_TEXT_LIMIT = 16 * 1024


def header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[:end]


def content_key(header: bytes, size: int) -> str:
    """Hash of the identifying header fields (first occurrence, unfolded) and the size."""
    unfolded = _FOLD.sub(b" ", header)
    found: dict[bytes, bytes] = {}
    for line in unfolded.splitlines():
        name, sep, value = line.partition(b":")
        key = name.strip().lower()
        if sep and key in KEY_FIELDS and key not in found:
            found[key] = _SPACE.sub(b" ", value).strip()
    digest = hashlib.sha256()
    for key in KEY_FIELDS:
        digest.update(key + b"\0" + found.get(key, b"") + b"\0")
    digest.update(str(size).encode())
    return "ck:" + digest.hexdigest()[:40]


def stable_id(*, emailid: str | None, gm_msgid: str | None, header: bytes, size: int) -> str:
    if emailid:
        return f"emailid:{emailid}"
    if gm_msgid:
        return f"gm:{gm_msgid}"
    return content_key(header, size)


SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\flagged": "\\Flagged", "\\answered": "\\Answered",
                "\\deleted": "\\Deleted", "\\draft": "\\Draft"}  # fmt: skip


def normalise_flags(flags: frozenset[str]) -> tuple[str, ...]:
    """System flags in canonical case, keywords as sent, \\Recent dropped; sorted."""
    out = {SYSTEM_FLAGS.get(f.lower(), f) for f in flags if f.lower() != "\\recent"}
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class SyncedMessage:
    """One message ready to store: raw bytes plus what the API lists and searches."""

    uid: int
    raw: bytes
    sha256: bytes
    stable_id: str
    flags: tuple[str, ...]
    internaldate: dt.datetime | None
    server_modseq: int | None
    parsed: ParsedMessage

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def flagged(self) -> bool:
        return "\\Flagged" in self.flags

    @property
    def sort_date(self) -> dt.datetime:
        return self.parsed.date or self.internaldate or dt.datetime.fromtimestamp(0, dt.UTC)

    def search_text(self) -> str:
        p = self.parsed
        people = " ".join(f"{a.name} {a.email}" for a in (*p.from_, *p.to, *p.cc))
        names = " ".join(a.filename or "" for a in p.attachments)
        body = (p.text or p.snippet or "")[:SEARCH_TEXT_LIMIT]
        return f"{p.subject} {people} {names} {body}"


def build(
    *,
    uid: int,
    raw: bytes,
    flags: frozenset[str],
    internaldate: dt.datetime | None,
    modseq: int | None,
    emailid: str | None,
    gm_msgid: str | None,
) -> SyncedMessage:
    parsed = parse_message(raw, internaldate=internaldate)
    return SyncedMessage(
        uid=uid,
        raw=raw,
        sha256=hashlib.sha256(raw).digest(),
        stable_id=stable_id(
            emailid=emailid, gm_msgid=gm_msgid, header=header_block(raw), size=len(raw)
        ),
        flags=normalise_flags(flags),
        internaldate=internaldate,
        server_modseq=modseq,
        parsed=parsed,
    )


def address_json(addresses: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"name": a.name, "email": a.email} for a in addresses]


__all__ = ["AttachmentInfo", "SyncedMessage", "address_json", "build", "content_key"]
