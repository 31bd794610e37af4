"""Builders of hostile MIME messages, shared by the parser's unit tests and the sync's
end-to-end test, plus the bounds every parse must stay within.

Why here: the same monsters must be parsed in isolation (time and tracemalloc peak) and also
survive a real APPEND → FETCH → store path, so both tests build them from one place. Every
builder returns CRLF bytes (Dovecot serves CRLF, so only CRLF mail comes back byte-identical).
"""

from __future__ import annotations

import base64
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from mailish.domain.parsing import ParsedMessage, extract_part, parse_message

MB = 1 << 20
INTERNALDATE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# The bounds, stated once. A parse of a message of S bytes must finish in
# TIME_BASE + TIME_PER_MB * S/MB seconds, and its tracemalloc peak must stay under
# MEMORY_FACTOR * S + MEMORY_BASE. Measured on a quiet 2-core machine the worst monsters took
# 0.8 s for 50 MB and peaked at 5.0x their size (a 50 MB body in a guessed Cyrillic charset:
# the slice, the UCS-2 text and the codec's scratch); the time bound leaves room for a CPU
# shared with other test processes.
TIME_BASE = 2.0
TIME_PER_MB = 0.2
MEMORY_FACTOR = 6
MEMORY_BASE = 16 * MB


def time_bound(size: int) -> float:
    return TIME_BASE + TIME_PER_MB * size / MB


def memory_bound(size: int) -> int:
    return MEMORY_FACTOR * size + MEMORY_BASE


@dataclass(frozen=True)
class Measured:
    parsed: ParsedMessage
    seconds: float
    peak: int  # tracemalloc peak, bytes


def measure(raw: bytes) -> Measured:
    """Parse ``raw`` twice: timed, then under tracemalloc, which slows allocation-heavy code
    several times over (the input itself is allocated before tracing starts)."""
    started = time.perf_counter()
    parsed = parse_message(raw, internaldate=INTERNALDATE)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        traced = parse_message(raw, internaldate=INTERNALDATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert traced == parsed  # deterministic
    return Measured(parsed, seconds, peak)


def assert_storable(raw: bytes, parsed: ParsedMessage) -> None:
    """What the store needs from any parse: PostgreSQL-safe text and servable parts."""
    texts = [parsed.subject, parsed.snippet, parsed.text or "", parsed.html or ""]
    texts += [a.name + a.email for a in (*parsed.from_, *parsed.to, *parsed.cc)]
    texts += [a.filename or "" for a in parsed.attachments] + list(parsed.defects)
    for value in texts:
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogates
    assert len(parsed.snippet) <= 200
    assert len(parsed.defects) <= 100
    for att in (*parsed.attachments[:3], *parsed.attachments[-1:]):  # served by the same id
        assert extract_part(raw, att.part_id) is not None, att.part_id


def assert_within_bounds(raw: bytes) -> ParsedMessage:
    m = measure(raw)
    assert m.seconds < time_bound(len(raw)), f"{m.seconds:.2f} s for {len(raw)} bytes"
    assert m.peak < memory_bound(len(raw)), f"peak {m.peak / MB:.1f} MB for {len(raw)} bytes"
    assert_storable(raw, m.parsed)
    return m.parsed


# -- builders ----------------------------------------------------------------------------------


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode()


def deep_multipart(levels: int) -> bytes:
    """``levels`` nested multipart/mixed, each with its own boundary, a text leaf at the bottom."""
    raw = [b"Subject: deep multipart\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    for i in range(1, levels):
        raw.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i))
    raw.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep leaf\r\n" % (levels - 1))
    raw.extend(b"--b%d--\r\n" % i for i in range(levels - 1, -1, -1))
    return b"".join(raw)


def deep_rfc822(levels: int) -> bytes:
    raw = b"Subject: leaf\r\n\r\nleaf body\r\n"
    head = b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n"
    return b"".join(head % i for i in range(levels)) + raw


def deep_quoted_printable(levels: int, body_size: int) -> bytes:
    """message/rfc822 bodies in quoted-printable, nested: each level decodes to a full copy."""
    head = (
        b"Subject: qp %d\r\nContent-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    leaf = b"Subject: leaf\r\n\r\n" + b"q" * body_size
    return b"".join(head % i for i in range(levels)) + leaf


def many_parts(count: int) -> bytes:
    parts = b"".join(
        b"--zz\r\nContent-Type: application/octet-stream; name=f%d.bin\r\n\r\nxx\r\n" % i
        for i in range(count)
    )
    head = b"Subject: %d parts\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n" % count
    return head + parts + b"--zz--\r\n"


def missing_boundary_param() -> bytes:
    return crlf("""
Subject: no boundary parameter
Content-Type: multipart/mixed

--guess
Content-Type: text/plain

sniffed text
--guess--
""")


def mismatched_boundary() -> bytes:
    return crlf("""
Subject: declared boundary never used
Content-Type: multipart/alternative; boundary="declared"

--actual
Content-Type: text/plain

body under the wrong boundary
--actual--
""")


def unclosed_boundaries() -> bytes:
    return crlf("""
Subject: nothing closes
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8

still readable
--inner
Content-Type: text/html

<p>still readable</p>
""")


def broken_charsets_and_words() -> bytes:
    koi8 = base64.b64encode("Отчёт".encode("koi8-r"))
    return b"\r\n".join(
        [
            b"Subject: =?x-no-such-charset?B?0JTQsA==?= =?utf-8?B?!!!notbase64?=",
            b" =?utf-8?Q?=ZZ=D0?=",
            b" =?../../etc/passwd?Q?a?= =?utf-8?B?0J?= =?koi8-r?B?"
            + koi8
            + b"?= =?utf-7?B?K2Q4MDAt?=",
            b'From: =?utf-8?B?/w==?= <a@example.com>, "=?bogus?Q?x?=" <b@example.com>',
            b"To: =?utf-8?Q?unterminated",
            b"Date: Thu, 32 Foo 99999 25:61:61 +9999",
            b"Content-Type: multipart/mixed; boundary=B",
            b"",
            b"--B",
            b'Content-Type: text/plain; charset="x-martian"',
            b"",
            "Привет".encode("cp1251"),
            b"--B",
            b"Content-Type: text/plain; charset=utf-7",
            b"",
            b"+2D3eAA- a pair, +2DQ- a lone surrogate in utf-7",
            b"--B",
            b"Content-Type: text/html; charset=zlib",
            b"",
            b"<p>bytes-to-bytes codec label</p>",
            b"--B",
            b"Content-Type: application/pdf; name*=utf-8''%ZZ%D0.pdf",
            b"Content-Transfer-Encoding: base64",
            b"",
            b"@@@not base64@@@=",
            b"--B--",
            b"",
        ]
    )


def nul_bytes() -> bytes:
    return (
        b"Subject: nul\x00 in subject\r\nFrom: N\x00ul <nul@example.com>\r\n"
        b"Content-Type: multipart/mixed; boundary=\x00B\r\n\r\n"
        b"--\x00B\r\nContent-Type: text/plain\r\n\r\nbody\x00with\x00nuls\r\n"
        b'--\x00B\r\nContent-Type: application/octet-stream; name="a\x00b"\r\n\r\n\x00\x00\r\n'
        b"--\x00B--\r\n"
    )


def huge_address_headers(names: tuple[bytes, ...] = (b"To",)) -> bytes:
    """Address headers of 256 KB of "@" each: the stdlib address parser's slowest input (the
    parser reads 64 KB of each, about 0.17 s per header)."""
    return b"".join(n + b": " + b"@" * (256 << 10) + b"\r\n" for n in names) + b"\r\nbody\r\n"


def long_body_line(size: int) -> bytes:
    return b"Subject: one long body line\r\n\r\n" + b"a" * size + b"\r\n"


def long_header_line(size: int) -> bytes:
    return b"Subject: " + b"h" * size + b"\r\n\r\nshort body\r\n"


def long_html_tags(size: int) -> bytes:
    return b"Content-Type: text/html\r\n\r\n" + b"<b>" * (size // 3) + b"visible\r\n"


def long_near_miss_delimiters(size: int) -> bytes:
    """One line of "--aX--aX...": every position is a boundary candidate that must be rejected."""
    head = b"Subject: near misses\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
    return head + b"--aX" * (size // 4) + b"\r\n"


def open_nesting_over_newlines(size: int, levels: int = 49) -> bytes:
    """``levels`` unclosed multiparts over ``size`` bytes of bare newlines (each level would
    rescan the whole body: the scan budget's worst case)."""
    raw = [b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    for i in range(1, levels):
        raw.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i))
    raw.append(b"--b%d\r\n\r\n" % (levels - 1))
    return b"".join(raw) + b"\r\n" * (size // 2)


def long_cyrillic_unlabelled(size: int) -> bytes:
    """The memory worst case: 8-bit text with no charset, guessed as cp1251, decoded to UCS-2."""
    word = "Привет ".encode("cp1251")
    return b"Subject: guess me\r\n\r\n" + word * (size // len(word))


def many_unlabelled_cyrillic_parts(count: int, size: int) -> bytes:
    """Parts whose charset must each be guessed (Python scoring per word): before the scoring
    cap, 2,000 parts of 30 KB took 33 s."""
    word = "Привет ".encode("cp1251")
    part = b"--zz\r\nContent-Type: text/plain\r\n\r\n" + word * (size // len(word)) + b"\r\n"
    head = b"Subject: guess each\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
    return head + part * count + b"--zz--\r\n"


Builder = Callable[[], bytes]


def named_monsters(big: int, medium: int) -> dict[str, Builder]:
    """Every fixed monster: the single-line header and body ones of ``big`` bytes, the other
    size-driven ones of ``medium`` bytes (their cost is linear, so a smaller one proves the
    same and keeps the suite fast)."""
    return {
        "deep-multipart-1000": lambda: deep_multipart(1000),
        "deep-rfc822-1000": lambda: deep_rfc822(1000),
        "deep-quoted-printable-60x1MB": lambda: deep_quoted_printable(60, MB),
        "parts-10000": lambda: many_parts(10_000),
        "missing-boundary-param": missing_boundary_param,
        "mismatched-boundary": mismatched_boundary,
        "unclosed-boundaries": unclosed_boundaries,
        "broken-charsets-and-words": broken_charsets_and_words,
        "nul-bytes": nul_bytes,
        "huge-address-headers": huge_address_headers,
        "long-body-line": lambda: long_body_line(big),
        "long-header-line": lambda: long_header_line(big),
        "long-html-tags": lambda: long_html_tags(medium),
        "long-near-miss-delimiters": lambda: long_near_miss_delimiters(medium),
        "open-nesting-over-newlines": lambda: open_nesting_over_newlines(medium),
        "long-cyrillic-unlabelled": lambda: long_cyrillic_unlabelled(medium),
        "unlabelled-cyrillic-parts-500": lambda: many_unlabelled_cyrillic_parts(500, 3000),
    }
