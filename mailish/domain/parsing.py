"""Best-effort parsing of a raw RFC 5322 message into the summary stored next to its bytes.

Why: the sync engine keeps every message's raw bytes unchanged and stores this summary for
listing, threading and previews. Mail in the wild is malformed in every imaginable way and one
bad message must never stall a mailbox sync, so nothing here raises: problems become `defects`,
and the work is bounded (parts, nesting depth, header sizes) so hostile input cannot blow up
time or memory. The MIME walk works on byte offsets into the raw message, so bodies are not
copied until decoded, and part ids follow IMAP section numbering so the API can serve a part by
the same id (`extract_part`). Pure: standard library only, never logs message content.
"""

from __future__ import annotations

import email.utils
import html as html_lib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from mailish.domain.charsets import clean_text, decode_header_bytes, decode_text, decode_words
from mailish.domain.mimetree import MimePart, build_tree, iter_parts, read_headers


@dataclass(frozen=True, slots=True)
class Address:
    name: str
    email: str


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    part_id: str  # IMAP section number, e.g. "2" or "1.2"
    filename: str | None
    content_type: str
    size: int  # decoded size in bytes
    content_id: str | None
    inline: bool


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    subject: str
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    date: datetime | None
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str | None
    html: str | None
    snippet: str
    attachments: tuple[AttachmentInfo, ...]
    has_attachments: bool  # any attachment other than an inline part referenced by Content-ID
    defects: tuple[str, ...]


_MAX_DEFECTS = 100
_MAX_ADDRESS_CHARS = 64 * 1024
_MIN_YEAR, _MAX_YEAR = 1970, 2100
_PART_ID = re.compile(r"[1-9][0-9]{0,5}(?:\.[1-9][0-9]{0,5}){0,99}")
_MSG_ID = re.compile(r"<([^<>]*)>")
_SPACE = re.compile(r"\s+")
_INVISIBLE = re.compile("[\u00ad\u034f\u200b-\u200f\u2060\ufeff]")
_HTML_TOKEN = re.compile(
    r"<(?=[!/?a-zA-Z])(!--|(script|style|title)\b|/?([a-zA-Z][a-zA-Z0-9]*)[^<>]*>|[!?][^<>]*>)",
    re.IGNORECASE,
)
_BLOCK_TAGS = frozenset(
    ("p", "br", "div", "li", "tr", "td", "th", "table", "ul", "ol", "blockquote", "hr", "h1", "h2")
)
# A snippet is looked for in this much text or markup only: a body of 50 MB of tags, blanks or
# zero-width characters would otherwise cost one Python step per token.
_SNIPPET_SCAN = 256 * 1024
_MAX_DEPTH_CAP = 200  # keeps the recursive walk far below the interpreter's recursion limit
_getaddresses: Callable[..., list[tuple[str, str]]] = email.utils.getaddresses


def _addresses(values: list[str], defects: list[str], limit: int) -> tuple[Address, ...]:
    value = ", ".join(values)
    if len(value) > limit:  # the stdlib address parser is slow on huge input
        value = value[:limit].rsplit(",", 1)[0] if limit > 0 else ""
        defects.append("address-header-truncated")
    try:
        pairs = _getaddresses([value], strict=True)
        if not any(n or a for n, a in pairs) and value.strip():
            pairs = _getaddresses([value], strict=False)
            if any(n or a for n, a in pairs):
                defects.append("address-lenient-parse")
    except TypeError:  # CPython without the `strict` parameter is lenient already
        pairs = _getaddresses([value])
    if any("=?" in a for _, a in pairs):  # the whole "Name <addr>" was an encoded-word
        pairs = _getaddresses([decode_words(value)[0]])
    out: list[Address] = []
    for name, addr in pairs:
        name, more = decode_words(name)
        defects.extend(more)
        addr = addr.strip().strip("<>").strip()
        name = _SPACE.sub(" ", clean_text(name)).strip()
        if name or addr:
            out.append(Address(name=name, email=clean_text(addr)))
    return tuple(out)


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None or not _MIN_YEAR <= parsed[0] <= _MAX_YEAR:
            return None
        y, mo, d, hh, mm, ss = parsed[:6]
        tz = timezone(timedelta(seconds=parsed[9] or 0))
        return datetime(y, mo, d, hh, mm, min(ss, 59), tzinfo=tz)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def _ids(value: str) -> tuple[str, ...]:
    found = [_SPACE.sub("", x) for x in _MSG_ID.findall(value)] or value.replace(",", " ").split()
    return tuple(dict.fromkeys(x for x in found if x))


def _collapse(text: str, limit: int) -> str:
    words: list[str] = []
    size = 0
    for m in re.finditer(r"\S+", text[:_SNIPPET_SCAN]):
        word = _INVISIBLE.sub("", m.group())
        if word:
            words.append(word)
            size += len(word) + 1
            if size > limit:
                break
    joined = " ".join(words)
    cut = joined[:limit]
    if (
        len(joined) > limit
        and joined[limit] != " "
        and len(word_cut := cut.rsplit(" ", 1)[0]) > limit // 2
    ):
        cut = word_cut  # prefer ending on a word boundary
    return cut.rstrip()


def _html_snippet(markup: str, limit: int) -> str:
    """Visible text of html (no scripts, styles or comments); scans only as far as needed."""
    if len(markup) > _SNIPPET_SCAN:
        markup = markup[:_SNIPPET_SCAN]
        if (cut := markup.rfind("<")) > markup.rfind(">"):
            markup = markup[:cut]  # never show half a tag as text
    parts: list[str] = []
    pos = seen = 0
    while seen < limit and (m := _HTML_TOKEN.search(markup, pos)):
        piece = html_lib.unescape(markup[pos : m.start()])
        parts.append(piece)
        seen += len("".join(piece.split()))
        if m.group(1) == "!--":
            close = markup.find("-->", m.end())
            pos = -1 if close < 0 else close + 3
        elif m.group(2):
            close_m = re.compile(rf"</{m.group(2)}\s*>", re.I).search(markup, m.end())
            pos = -1 if close_m is None else close_m.end()
        else:
            pos = m.end()
            parts.append(" " if (m.group(3) or "").lower() in _BLOCK_TAGS else "")
        if pos < 0:
            break
    else:
        parts.append(html_lib.unescape(markup[pos:]) if seen < limit else "")
    return _collapse("".join(parts), limit)


def _collect(
    node: MimePart,
    texts: list[str],
    htmls: list[str],
    atts: list[AttachmentInfo],
    defects: list[str],
) -> None:
    """Gather body text/html and attachments; in multipart/alternative keep one of each."""
    if node.ctype.startswith("multipart/"):
        if node.opaque or node.ctype != "multipart/alternative":
            for child in node.children:
                _collect(child, texts, htmls, atts, defects)
            return
        options: list[tuple[list[str], list[str], MimePart]]
        options = [([], [], child) for child in node.children]
        for t, h, child in options:
            _collect(child, t, h, atts, defects)
        texts.extend(next((t for t, _, _ in options if t), []))
        htmls.extend(next((h for _, h, _ in options if h), []))
        return
    try:
        disposition = node.mime.get_content_disposition()
        if node.ctype in ("text/plain", "text/html") and disposition != "attachment":
            (htmls if node.ctype == "text/html" else texts).append(node.text(defects))
            return
        data, defect = node.payload()
        if defect:
            defects.append(defect)
        cid = node.header("content-id").strip().strip("<>").strip() or None
        inline = disposition == "inline" or (disposition is None and cid is not None)
        info = AttachmentInfo(node.part_id, node.filename(), node.ctype, len(data), cid, inline)
        atts.append(info)
    except Exception as exc:  # one broken part must not hide the others
        defects.append(f"part-error:{node.part_id}:{type(exc).__name__}")


def parse_message(
    raw: bytes,
    *,
    internaldate: datetime | None = None,
    snippet_chars: int = 200,
    max_parts: int = 2000,
    max_depth: int = 50,
) -> ParsedMessage:
    """Parse raw message bytes into a summary. Never raises; problems are listed in `defects`."""
    defects: list[str] = []
    raw = bytes(raw)
    root: MimePart | None = None
    try:
        depth = min(max_depth, _MAX_DEPTH_CAP)
        root = build_tree(raw, max_parts=max_parts, max_depth=depth, defects=defects)
        headers = root.headers
    except Exception as exc:  # a bug must not stall a mailbox sync
        defects.append(f"parser-error:{type(exc).__name__}")
        headers = read_headers(raw, 0, len(raw), defects)[0] if root is None else root.headers
    values: dict[str, list[bytes]] = {}
    for name, value in headers:
        values.setdefault(name, []).append(value)

    def decoded(name: str) -> str:
        try:
            text, more = decode_header_bytes(values.get(name, [b""])[0])
        except Exception as exc:
            defects.append(f"header-error:{name}:{type(exc).__name__}")
            return ""
        defects.extend(more)
        return _SPACE.sub(" ", text).strip()

    # One budget for all six address headers: 64 KB of "@" costs the stdlib parser ~0.2 s,
    # so a hostile message filling every header would otherwise cost six times that.
    address_chars = _MAX_ADDRESS_CHARS

    def addrs(name: str) -> tuple[Address, ...]:
        nonlocal address_chars
        try:
            texts = [decode_text(v, None)[0] for v in values.get(name, [])]
            found = _addresses(texts, defects, address_chars)
            address_chars -= min(address_chars, sum(len(t) + 2 for t in texts))
            return found
        except Exception as exc:
            defects.append(f"header-error:{name}:{type(exc).__name__}")
            return ()

    date = _parse_date(decoded("date")) if "date" in values else None
    if date is None:
        defects.append("date-invalid" if "date" in values else "date-missing")
        if internaldate is not None and internaldate.tzinfo is None:
            internaldate = internaldate.replace(tzinfo=UTC)
        date = internaldate
    texts: list[str] = []
    htmls: list[str] = []
    atts: list[AttachmentInfo] = []
    try:
        if root is not None:
            _collect(root, texts, htmls, atts, defects)
    except Exception as exc:
        defects.append(f"body-error:{type(exc).__name__}")
    text = "\n".join(texts) if texts else None
    html = "\n".join(htmls) if htmls else None
    try:
        snippet = _collapse(text, snippet_chars) if text and not text.isspace() else ""
        snippet = snippet or (_html_snippet(html, snippet_chars) if html else "")
    except Exception as exc:
        defects.append(f"snippet-error:{type(exc).__name__}")
        snippet = ""
    ids = _ids(decoded("message-id"))
    return ParsedMessage(
        subject=decoded("subject"),
        from_=addrs("from"),
        sender=addrs("sender"),
        reply_to=addrs("reply-to"),
        to=addrs("to"),
        cc=addrs("cc"),
        bcc=addrs("bcc"),
        date=date,
        message_id=ids[0] if ids else None,
        in_reply_to=_ids(decoded("in-reply-to")),
        references=_ids(decoded("references")),
        text=text,
        html=html,
        snippet=snippet,
        attachments=tuple(atts),
        has_attachments=any(not (a.inline and a.content_id) for a in atts),
        defects=tuple(dict.fromkeys(defects))[:_MAX_DEFECTS],
    )


def extract_part(raw: bytes, part_id: str) -> tuple[bytes, str] | None:
    """Decoded bytes and content type of the part with IMAP section number `part_id`."""
    if not _PART_ID.fullmatch(part_id):
        return None
    try:
        root = build_tree(bytes(raw), max_parts=2000, max_depth=50, defects=[])
        node = next((n for n in iter_parts(root) if n.part_id == part_id), None)
        return None if node is None else (node.payload()[0], node.ctype)
    except Exception:
        return None
