"""Making stored mail safe to hand to a client: sanitized html and download headers.

Why: mail is written by strangers and the app renders it in a web view, so the html we serve
must carry no script, event handler or ``javascript:`` URL, and a downloaded part must never be
rendered by a browser as a page of our origin. nh3 (the Rust ammonia sanitizer) parses html the
way browsers do, which a regex never will. Formatting that newsletters rely on (tables, inline
styles limited to layout and typography, ``<font>``) is kept; remote images are kept too, the
client decides whether to load them. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
import urllib.parse

import nh3

_TAGS = nh3.ALLOWED_TAGS | {"font", "tfoot"}
_TABLE_ATTRS = {"bgcolor", "width", "height", "valign", "border", "cellpadding", "cellspacing"}
_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "title", "dir", "lang", "align"},
    "font": {"color", "face", "size"},
    "table": nh3.ALLOWED_ATTRIBUTES["table"] | _TABLE_ATTRS,
    "td": nh3.ALLOWED_ATTRIBUTES["td"] | _TABLE_ATTRS,
    "th": nh3.ALLOWED_ATTRIBUTES["th"] | _TABLE_ATTRS,
    "tr": nh3.ALLOWED_ATTRIBUTES["tr"] | {"bgcolor", "valign"},
}
# cid: points at an inline part of the same message; data: is left out because a data: URL
# in a link opens a document the sender wrote.
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid"}
# Layout and typography only: no position (overlays that fake our UI) and nothing that takes
# a URL (background, list-style-image, content, cursor).
_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "text-align", "text-decoration", "text-indent", "text-transform",
    "line-height", "letter-spacing", "white-space", "word-break", "vertical-align",
    "width", "max-width", "min-width", "height", "max-height", "min-height",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-radius", "border-collapse", "border-spacing",
    "display", "float", "clear", "direction", "list-style-type", "table-layout",
}  # fmt: skip

# Types a browser would execute or render as a document (scripts, html, svg, xml, flash).
# With nosniff and an attachment disposition they are downloads anyway; serving them as
# octet-stream also covers clients that ignore the disposition.
_ACTIVE_TYPES = frozenset(
    (
        "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
        "text/xsl", "application/xslt+xml", "text/javascript", "application/javascript",
        "application/ecmascript", "text/ecmascript", "application/x-javascript",
        "application/x-shockwave-flash", "multipart/x-mixed-replace", "text/vtt",
        "application/wasm",
    )
)  # fmt: skip
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_OCTET_STREAM = "application/octet-stream"
# RFC 5987 attr-char besides letters and digits; everything else is percent-encoded.
_ATTR_CHARS = "!#$&+-.^_`|~"
_UNSAFE_FALLBACK = re.compile(r'[^\x20-\x7e]|["\\%;]')
_PATH_SEPARATORS = re.compile(r"[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_FILENAME_CHARS = 255


@functools.cache
def _cleaner() -> nh3.Cleaner:
    """Built on first use rather than at import time; a Cleaner is immutable and thread-safe."""
    return nh3.Cleaner(
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        filter_style_properties=_STYLE_PROPERTIES,
        link_rel="noopener noreferrer",
    )


def clean_html(markup: str) -> str:
    """The markup without scripts, event handlers, active URLs or unknown tags."""
    return _cleaner().clean(markup)


def download_type(content_type: str) -> str:
    """The type to serve a part as: its own unless a browser could run or render it."""
    ctype = content_type.strip().lower()
    if not _MIME_TYPE.fullmatch(ctype) or ctype in _ACTIVE_TYPES or ctype.endswith("+xml"):
        return _OCTET_STREAM
    return ctype


def content_disposition(filename: str | None) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form.

    Path separators and control characters are replaced so a client that saves by the given
    name cannot be steered outside its download folder or split the header.
    """
    name = _CONTROL.sub("", _PATH_SEPARATORS.sub("_", filename or "")).strip()
    name = name.lstrip(".")[:_MAX_FILENAME_CHARS] or "attachment"
    fallback = _UNSAFE_FALLBACK.sub("_", name)
    encoded = urllib.parse.quote(name, safe=_ATTR_CHARS)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
