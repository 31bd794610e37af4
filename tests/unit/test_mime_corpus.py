"""Hostile and real-world MIME: every message parses best-effort within stated bounds.

Bounds (tests/harness/hostile_mime.py): a message of S bytes parses in under
2 s + 0.2 s/MB, with a tracemalloc peak under 6 x S + 16 MB, and yields text PostgreSQL can
store and part ids the API can serve. Inputs: CPython's own email test data (Debian
libpython3.11-testsuite), fixed monsters (1,000-deep nesting, 10,000 parts, broken boundaries,
charsets and encoded-words, NUL bytes, 50 MB single lines) and Hypothesis-built MIME trees.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailish.domain.parsing import extract_part, parse_message
from tests.harness import hostile_mime as hm

CORPUS = Path("/usr/lib/python3.11/test/test_email/data")
CORPUS_PACKAGE = "libpython3.11-testsuite"
BIG = 50 * hm.MB
MEDIUM = 8 * hm.MB


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.fail(
            f"{CORPUS} is missing: install the Debian package {CORPUS_PACKAGE} "
            f"(`make test` does, through scripts/system-packages.sh)"
        )
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    assert len(files) >= 60, f"{CORPUS} holds only {len(files)} files"
    return files


# -- CPython's email test data -------------------------------------------------------------------


def test_cpython_corpus_parses_within_bounds() -> None:
    """All 64 files (mail, and the images and sounds the stdlib tests attach) parse."""
    for path in corpus_files():
        raw = path.read_bytes()
        m = hm.measure(raw)
        assert m.seconds < 1.0, path.name
        assert m.peak < 1 * hm.MB + 64 * len(raw), (path.name, m.peak)  # tiny messages
        hm.assert_storable(raw, m.parsed)


def _stdlib_subject(raw: bytes) -> str:
    subject = email.message_from_bytes(raw, policy=email.policy.default)["subject"]
    return re.sub(r"\s+", " ", str(subject or "")).strip()


def test_cpython_corpus_agrees_with_the_stdlib_parser() -> None:
    """Our bounded walk and the stdlib's feed parser read the same subject from every message,
    and every attachment we list extracts to exactly its recorded size."""
    checked = 0
    for path in corpus_files():
        if not path.name.startswith("msg_"):
            continue
        raw = path.read_bytes()
        parsed = parse_message(raw)
        assert parsed.subject == _stdlib_subject(raw), path.name
        for att in parsed.attachments:
            part = extract_part(raw, att.part_id)
            assert part is not None and len(part[0]) == att.size, (path.name, att.part_id)
        checked += 1
    assert checked >= 45


def test_cpython_corpus_spot_checks() -> None:
    files = {p.name: p.read_bytes() for p in corpus_files()}
    digest = parse_message(files["msg_02.txt"])  # a multipart/digest of message/rfc822 parts
    assert digest.subject == "Ppp digest, Vol 1 #2 - 5 msgs"
    assert [a.content_type for a in digest.attachments] == ["message/rfc822"] * 5
    bounce = parse_message(files["msg_43.txt"])  # a bounce with 28 leaf parts
    assert bounce.from_[0].name == "MAILER DAEMON"
    assert bounce.text is not None and "BANNED FILENAME ALERT" in bounce.text
    assert [a.content_type for a in bounce.attachments] == [
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    no_closing = parse_message(files["msg_38.txt"])
    assert "multipart-missing-closing-boundary" in no_closing.defects


# -- fixed monsters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    defects: tuple[str, ...] = ()
    text: str | None = None  # a substring of the recovered plain text
    subject: str | None = None


EXPECTED: dict[str, Expect] = {
    "deep-multipart-1000": Expect(("max-depth-exceeded",), subject="deep multipart"),
    "deep-rfc822-1000": Expect(("max-depth-exceeded",), subject="level 0"),
    "deep-quoted-printable-60x1MB": Expect(("max-decode-exceeded",), subject="qp 0"),
    "parts-10000": Expect(("max-parts-exceeded",), subject="10000 parts"),
    "missing-boundary-param": Expect(("multipart-missing-boundary",), text="sniffed text"),
    "mismatched-boundary": Expect(("multipart-without-parts",), text="body under the wrong"),
    "unclosed-boundaries": Expect(("multipart-missing-closing-boundary",), "still readable"),
    "broken-charsets-and-words": Expect(("date-invalid",), text="Привет"),
    "nul-bytes": Expect(text="bodywithnuls", subject="nul in subject"),
    "huge-address-headers": Expect(("address-header-truncated",), text="body"),
    "long-body-line": Expect(text="aaaa", subject="one long body line"),
    "long-header-line": Expect(("header-too-long",), text="short body"),
    "long-html-tags": Expect(),
    "long-near-miss-delimiters": Expect(("multipart-without-parts",), text="--aX--aX"),
    "open-nesting-over-newlines": Expect(("max-scan-exceeded",)),
    "long-cyrillic-unlabelled": Expect(text="Привет Привет", subject="guess me"),
    "unlabelled-cyrillic-parts-500": Expect(("charset-fallback:us-ascii->cp1251",), "Привет"),
}


def test_every_monster_has_expectations() -> None:
    assert EXPECTED.keys() == hm.named_monsters(BIG, MEDIUM).keys()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fixed_monsters_parse_within_bounds(name: str) -> None:
    raw = hm.named_monsters(BIG, MEDIUM)[name]()
    parsed = hm.assert_within_bounds(raw)
    expect = EXPECTED[name]
    for defect in expect.defects:
        assert defect in parsed.defects, parsed.defects
    if expect.text is not None:
        assert parsed.text is not None and expect.text in parsed.text[:100_000]
    if expect.subject is not None:
        assert parsed.subject == expect.subject


def test_ten_thousand_parts_keep_the_first_parts_in_order() -> None:
    parsed = parse_message(hm.many_parts(10_000))
    assert len(parsed.attachments) == 1999  # max_parts 2000, the root included
    assert [a.filename for a in parsed.attachments[:3]] == ["f0.bin", "f1.bin", "f2.bin"]
    assert parsed.attachments[-1].part_id == "1999"


def test_every_address_header_at_its_worst_stays_within_the_time_bound() -> None:
    raw = hm.huge_address_headers((b"From", b"Sender", b"Reply-To", b"To", b"Cc", b"Bcc"))
    started = time.perf_counter()
    parsed = parse_message(raw)
    assert time.perf_counter() - started < hm.time_bound(len(raw))
    assert "address-header-truncated" in parsed.defects
    assert parsed.to == parsed.cc == parsed.bcc == ()  # From used up the shared budget


def test_an_address_flood_cannot_hide_the_sender() -> None:
    raw = (
        b"From: Real Sender <real@example.com>\r\nTo: " + b"a@b, " * 100_000 + b"\r\n"
        b"Cc: late@example.com\r\n\r\nbody"
    )
    parsed = parse_message(raw)
    assert parsed.from_[0].email == "real@example.com"
    assert 10_000 < len(parsed.to) < 14_000  # 64 KB of addresses, the budget of a message
    assert parsed.cc == ()
    assert "address-header-truncated" in parsed.defects


def test_deep_quoted_printable_keeps_memory_near_the_message_size() -> None:
    """Before the decode budget, 60 nested quoted-printable levels of 1 MB peaked at 53 MB."""
    raw = hm.deep_quoted_printable(60, hm.MB)
    assert hm.measure(raw).peak < 4 * len(raw) + 2 * hm.MB


def test_html_snippet_of_a_huge_tag_soup_is_fast() -> None:
    """Before the scan window, 50 MB of "<b>" took 120 s (one Python step per tag)."""
    started = time.perf_counter()
    parsed = parse_message(hm.long_html_tags(BIG))
    assert time.perf_counter() - started < hm.time_bound(BIG)
    assert parsed.snippet == ""  # the visible word lies beyond the snippet window
    short = parse_message(b"Content-Type: text/html\r\n\r\n" + b"<b>" * 1000 + b"visible")
    assert short.snippet == "visible"


def test_the_broken_charset_message_recovers_what_it_can() -> None:
    parsed = parse_message(hm.broken_charsets_and_words())
    assert "Отчёт" in parsed.subject
    assert [a.email for a in parsed.from_] == ["a@example.com", "b@example.com"]
    assert parsed.html == "<p>bytes-to-bytes codec label</p>"
    (pdf,) = parsed.attachments
    assert pdf.content_type == "application/pdf" and pdf.size > 0
    assert any(d.startswith("charset-fallback:x-martian") for d in parsed.defects)
    assert parsed.text == "Привет\n\U0001f600 a pair, ? a lone surrogate in utf-7"


# -- Hypothesis-built MIME trees -----------------------------------------------------------------

CHARSETS = ["utf-8", "koi8-r", "windows-1251", "iso-2022-jp", "utf-7", "utf-16", "x-bogus",
            "zlib", "../../x", '"utf-8', "utf-8''", "", "UTF-8*ru"]  # fmt: skip
ENCODINGS = ["", "7bit", "base64", "BASE64", "quoted-printable", "x-uuencode", '"base64']
LEAF_TYPES = ["text/plain", "text/html", "application/octet-stream", "message/rfc822",
              "image/png", "text/plain; format=flowed", "", "garbage"]  # fmt: skip
JUNK = st.sampled_from(
    [b"\x00", b"\xff\xfe", b"=?", b"?=", b"=?utf-8?B?", b"=?utf-8?Q?=FF?=", b"\r", b"\n", b"--",
     b";", b'"', b"<", b">", b"(", b"\\", b"\t", b"=\r\n", b"=XY", "Привет".encode("cp1251")]
)  # fmt: skip
BODY = st.lists(st.one_of(JUNK, st.binary(max_size=40)), max_size=12).map(b"".join)


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    head = [b"Content-Type: " + ctype.encode() + (b"; charset=" + charset.encode()) * bool(charset)]
    if cte := draw(st.sampled_from(ENCODINGS)):
        head.append(b"Content-Transfer-Encoding: " + cte.encode())
    if draw(st.booleans()):
        name = draw(st.sampled_from([b"a.pdf", b"=?utf-8?B?0YQ=?=", b"\x00", b"", b"x" * 300]))
        head.append(b'Content-Disposition: attachment; filename="' + name + b'"')
    if draw(st.booleans()):
        head.append(b"Subject: " + draw(BODY).replace(b"\n", b" "))
    separator = draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b""]))
    return b"\r\n".join(head) + separator + draw(BODY)


def multipart(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        declared = draw(st.sampled_from(["b", "B", "same", "", "x" * 80, "--", "a b", "b\x00"]))
        used = draw(st.sampled_from([declared, declared, "other", ""]))
        subtype = draw(st.sampled_from(["mixed", "alternative", "digest", "related", "bogus"]))
        param = f'; boundary="{declared}"' if declared else ""
        out = [f"Content-Type: multipart/{subtype}{param}\r\n\r\n".encode(), draw(BODY)]
        for child in draw(st.lists(children, max_size=5)):
            out.append(b"\r\n--" + used.encode() + draw(st.sampled_from([b"", b"  ", b"x"])))
            out.append(b"\r\n" + child)
        if draw(st.booleans()):
            out.append(b"\r\n--" + used.encode() + b"--\r\n")
        out.append(draw(BODY))
        return b"".join(out)

    return build()


def rfc822(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    cte = st.sampled_from([b"", b"Content-Transfer-Encoding: quoted-printable\r\n"])
    return st.tuples(cte, inner).map(
        lambda t: b"Content-Type: message/rfc822\r\n" + t[0] + b"\r\n" + t[1]
    )


TREES = st.recursive(leaf(), lambda kids: st.one_of(multipart(kids), rfc822(kids)), max_leaves=20)


def _assert_parses(raw: bytes) -> None:
    hm.assert_within_bounds(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(TREES)
def test_generated_mime_trees_parse_within_bounds(raw: bytes) -> None:
    _assert_parses(raw)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(TREES)
def test_generated_mime_trees_parse_within_bounds_long_run(raw: bytes) -> None:
    _assert_parses(raw)


@st.composite
def scaled_monster(draw: st.DrawFn) -> bytes:
    """Scale dimensions drawn by Hypothesis: depth up to 1,200, parts up to 12,000."""
    kind = draw(st.sampled_from(["multipart", "rfc822", "parts", "qp"]))
    if kind == "multipart":
        return hm.deep_multipart(draw(st.integers(1, 1200)))
    if kind == "rfc822":
        return hm.deep_rfc822(draw(st.integers(1, 1200)))
    if kind == "qp":
        return hm.deep_quoted_printable(draw(st.integers(1, 80)), draw(st.integers(0, 64 << 10)))
    return hm.many_parts(draw(st.integers(0, 12_000)))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(scaled_monster())
def test_generated_scale_monsters_parse_within_bounds(raw: bytes) -> None:
    hm.assert_within_bounds(raw)
