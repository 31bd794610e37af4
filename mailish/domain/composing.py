"""Composing an outgoing message from what the app sends: pure, deterministic, injection-proof.

Why it lives here: mail goes out through the user's own SMTP server and a copy is filed in Sent,
so the bytes must be right the first time and identical on every retry. `compose` validates the
draft and names the offending field (`to[1]`, `subject`, `size`, ...) so the API can point at
it; it fixes the Message-ID at compose time (the worker passes it back on a retry or a draft
update, which is how a resend after a crash is recognised instead of duplicated) and derives
the MIME boundaries from it, so the same inputs always give the same bytes. Bcc recipients go
only into the SMTP envelope (`recipients`), never into a header. Every header value is either a
validated token or RFC 2047/2231-encoded, so CR, LF or NUL typed into a subject, a name or a
filename cannot start a header line. Pure: standard library only; bytes come from
`mime_building`, limits for the pre-send hook from `presend`.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from mailish.domain.addresses import AddressError, normalise_address
from mailish.domain.mime_building import (
    Leaf,
    Multipart,
    Part,
    address_header,
    attachment_leaf,
    fold,
    mailbox_tokens,
    serialise,
    subject_header,
    text_leaf,
)

MAX_RECIPIENTS = 100
MAX_REFERENCES = 20  # the thread root plus the 19 nearest ancestors, as most clients keep
DEFAULT_MAX_SIZE = 25 * 1024 * 1024
_BREAKS = re.compile(r"[\r\n\x00]")
_NAMED = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*", re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_ATEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x9f])"  # RFC 5322 atext, RFC 6532 utf-8
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LITERAL = re.compile(r"\[[A-Za-z0-9.:]{1,64}\]")
_ID = re.compile(r"[!-;=?-~]{1,320}")  # printable ASCII without `<` and `>`

Mailbox = tuple[str, str]  # (display name, normalised address)


class ComposeError(ValueError):
    """The draft cannot be sent as given; `field` names the input at fault, e.g. `cc[0]`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Sender:
    address: str
    display_name: str | None


@dataclass(frozen=True, slots=True)
class AttachmentIn:
    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """The message replied to: its Message-ID and References as sync stored them (with or
    without angle brackets; ids that cannot be written safely are dropped, not fatal)."""

    message_id: str
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Draft:
    """What the app sends. Recipients are `addr` or `Name <addr>`; text and html are optional
    (an empty string counts as absent)."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    text: str | None
    html: str | None
    attachments: list[AttachmentIn]
    in_reply_to: ReplyTo | None = None


@dataclass(frozen=True, slots=True)
class Composed:
    raw: bytes
    message_id: str  # without angle brackets, the form parse_message and sync store
    envelope_from: str
    recipients: tuple[str, ...]  # To, Cc and Bcc, normalised and de-duplicated, in order

    @property
    def needs_smtputf8(self) -> bool:
        """An address has a non-ASCII local part, so the relay must offer SMTPUTF8."""
        return not all(a.isascii() for a in (self.envelope_from, *self.recipients))


def compose(
    sender: Sender,
    draft: Draft,
    *,
    now: datetime,
    message_id: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    draft_mode: bool = False,
) -> Composed:
    """Validate and build the message; raises ComposeError. Drafts may lack recipients."""
    if now.utcoffset() is None:
        raise ComposeError("now", "must be timezone-aware")
    envelope_from = _address(sender.address, "sender.address")
    display = _display_name(sender.display_name or "", "sender.display_name")
    lists = {field: _mailboxes(values, field) for field, values in _lists(draft)}
    recipients = list(dict.fromkeys(a for mailboxes in lists.values() for _, a in mailboxes))
    if not recipients and not draft_mode:
        raise ComposeError("to", "at least one recipient is required")
    if len(recipients) > MAX_RECIPIENTS:
        raise ComposeError("to", f"{len(recipients)} recipients; at most {MAX_RECIPIENTS}")
    _check_text(draft.subject, "subject")
    _check_text(draft.text or "", "text", allow_breaks=True)
    _check_text(draft.html or "", "html", allow_breaks=True)
    bare_id = _message_id(message_id, envelope_from)
    encoded = sum(-(-len(a.data) // 3) * 4 for a in draft.attachments)
    if encoded > max_size:  # refuse before building a copy of oversized data
        raise ComposeError("size", f"attachments need {encoded} bytes; the limit is {max_size}")
    shown: set[str] = set()
    headers = [
        fold("Date", [email.utils.format_datetime(now)]),
        fold("From", mailbox_tokens(display, envelope_from)),
    ]
    for field, name in (("to", "To"), ("cc", "Cc")):  # Bcc is deliberately never written
        listed = [m for m in lists[field] if m[1] not in shown]
        shown.update(address for _, address in listed)
        if listed:
            headers.append(address_header(name, listed))
    headers.append(subject_header(draft.subject))
    headers.append(fold("Message-ID", [f"<{bare_id}>"]))
    if draft.in_reply_to is not None:
        headers.extend(_reply_headers(draft.in_reply_to))
    headers.append(b"MIME-Version: 1.0\r\n")
    seed = hashlib.sha256(bare_id.encode("ascii")).hexdigest()[:24]
    raw = serialise(headers, _body(draft), seed)
    if len(raw) > max_size:
        raise ComposeError("size", f"the message is {len(raw)} bytes; the limit is {max_size}")
    return Composed(raw, bare_id, envelope_from, tuple(recipients))


def _lists(draft: Draft) -> tuple[tuple[str, list[str]], ...]:
    return (("to", draft.to), ("cc", draft.cc), ("bcc", draft.bcc))


def _check_text(value: str, field: str, *, allow_breaks: bool = False) -> None:
    if not allow_breaks and _BREAKS.search(value):
        raise ComposeError(field, "must not contain line breaks or NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ComposeError(field, "is not valid unicode text") from None


def _display_name(value: str, field: str) -> str:
    _check_text(value, field)
    return " ".join(value.split())


def _address(text: str, field: str) -> str:
    """The normalised address, stricter than `normalise_address` where a header could break:
    the local part must be a dot-atom and an address literal must look like an IP address."""
    _check_text(text, field)
    try:
        address = normalise_address(text)
    except AddressError as exc:
        raise ComposeError(field, str(exc)) from None
    local, _, domain = address.rpartition("@")
    if not _LOCAL.fullmatch(local) or (domain.startswith("[") and not _LITERAL.fullmatch(domain)):
        raise ComposeError(field, f"{text!r} is not an address mail servers accept")
    return address


def _mailboxes(values: list[str], field: str) -> list[Mailbox]:
    """Each `addr` or `Name <addr>` parsed; repeats of an address keep the first occurrence."""
    out: dict[str, str] = {}
    for index, text in enumerate(values):
        where = f"{field}[{index}]"
        _check_text(text, where)
        named = _NAMED.fullmatch(text)
        name, address = (named.group(1), named.group(2)) if named else ("", text)
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = _QUOTED_PAIR.sub(r"\1", name[1:-1])
        out.setdefault(_address(address, where), _display_name(name, where))
    return [(name, address) for address, name in out.items()]


def _bare_id(value: str) -> str | None:
    bare = value.strip().removeprefix("<").removesuffix(">")
    return bare if _ID.fullmatch(bare) else None


def _message_id(given: str | None, envelope_from: str) -> str:
    if given is None:
        return f"{secrets.token_hex(16)}@{envelope_from.rpartition('@')[2]}"
    bare = _bare_id(given)
    left, at, right = (bare or "").rpartition("@")
    if not (left and at and right) or "@" in left:
        raise ComposeError("message_id", "must look like <left@domain> in printable ASCII")
    return f"{left}@{right}"


def _reply_headers(parent: ReplyTo) -> list[bytes]:
    """In-Reply-To the parent; References its References plus its id, capped but keeping the
    thread root (RFC 5322 §3.6.4), so threading survives long conversations."""
    parent_id = _bare_id(parent.message_id)
    ids = (_bare_id(value) for value in (*parent.references, parent.message_id))
    refs = list(dict.fromkeys(i for i in ids if i))
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[1 - MAX_REFERENCES :]
    out = [fold("In-Reply-To", [f"<{parent_id}>"])] if parent_id else []
    if refs:
        out.append(fold("References", [f"<{ref}>" for ref in refs]))
    return out


def _body(draft: Draft) -> Part:
    """text/plain, text/html or alternative (text first); inline images referenced by
    Content-ID sit with the html in multipart/related (RFC 2387); other attachments in mixed."""
    text, html = draft.text or "", draft.html or ""
    body: Part = text_leaf(html, "html") if html else text_leaf(text, "plain")
    if html and text:
        body = Multipart("alternative", (text_leaf(text, "plain"), body))
    related: list[Part] = []
    mixed: list[Part] = []
    for index, attachment in enumerate(draft.attachments):
        leaf = _attachment(index, attachment)
        wanted = html and attachment.inline and attachment.content_id
        (related if wanted else mixed).append(leaf)
    if related:
        root = "multipart/alternative" if isinstance(body, Multipart) else "text/html"
        body = Multipart("related", (body, *related), (f'type="{root}"',))
    return Multipart("mixed", (body, *mixed)) if mixed else body


def _attachment(index: int, attachment: AttachmentIn) -> Leaf:
    field = f"attachments[{index}]"
    _check_text(attachment.filename, f"{field}.filename", allow_breaks=True)
    cid = attachment.content_id
    if cid is not None and (cid := _bare_id(cid)) is None:
        raise ComposeError(f"{field}.content_id", "must be printable ASCII, no spaces")
    return attachment_leaf(
        filename=attachment.filename,
        content_type=attachment.content_type,
        data=attachment.data,
        inline=attachment.inline,
        content_id=cid,
    )
