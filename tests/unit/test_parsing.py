"""Tests for mailish.domain.parsing: best-effort MIME parsing that never raises."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailish.domain import charsets, parsing
from mailish.domain.parsing import Address, ParsedMessage, extract_part, parse_message

INTERNAL = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
RU = "Привет, как дела? Это тестовое сообщение для проверки кодировки."


def case_id(value: object) -> str:
    """Readable parametrize ids: short strings as-is, byte payloads by size."""
    if isinstance(value, bytes):
        return f"{len(value)}B"
    return str(value)[:40]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def message(headers: str | bytes, body: bytes = b"body\n") -> bytes:
    head = headers.encode() if isinstance(headers, str) else headers
    return head.strip(b"\n").replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


def text_part(charset: str, data: bytes) -> bytes:
    return message(f"Content-Type: text/plain; charset={charset}", data)


MIXED = message(
    'From: "Ivan" <ivan@example.com>\nSubject: report\n'
    'Content-Type: multipart/mixed; boundary="OUT"',
    b"preamble\r\n"
    b"--OUT\r\nContent-Type: multipart/alternative; boundary=ALT\r\n\r\n"
    b"--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello \xd0\xbc\xd0\xb8\xd1\x80\r\n"
    b"--ALT\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello</p>\r\n"
    b"--ALT--\r\n"
    b"--OUT\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(b"%PDF-1.4 data").encode() + b"\r\n"
    b'--OUT\r\nContent-Type: image/png; name="=?utf-8?B?'
    + b64("фото.png".encode()).encode()
    + b'?="\r\nContent-ID: <img1@x>\r\nContent-Disposition: inline\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(b"\x89PNG....").encode() + b"\r\n"
    b"--OUT\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n"
    b" filename*0*=utf-8''%D0%B4%D0%BE%D0%BA%D1%83%D0%BC%D0%B5%D0%BD%D1%82; filename*1=\".bin\"\r\n"
    b"\r\nraw\r\n"
    b"--OUT--\r\nepilogue\r\n",
)


def test_plain_ascii() -> None:
    raw = message(
        "From: Alice Example <alice@example.com>\nTo: bob@example.org\n"
        "Subject: Lunch?\nDate: Tue, 2 Jan 2024 12:30:00 +0100\nMessage-ID: <m1@example.com>",
        b"Shall we\r\n  meet   at noon?\r\n",
    )
    p = parse_message(raw)
    assert p.subject == "Lunch?"
    assert p.from_ == (Address("Alice Example", "alice@example.com"),)
    assert p.to == (Address("", "bob@example.org"),)
    assert p.date == datetime(2024, 1, 2, 12, 30, tzinfo=timezone(timedelta(hours=1)))
    assert p.message_id == "m1@example.com"
    assert p.text == "Shall we\r\n  meet   at noon?\r\n"
    assert p.html is None
    assert p.snippet == "Shall we meet at noon?"
    assert (p.attachments, p.has_attachments, p.defects) == ((), False, ())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(f"=?utf-8?B?{b64('Привет мир'.encode())}?=", "Привет мир", id="utf8-b"),
        pytest.param("=?UTF-8?Q?Caf=C3=A9_cr=C3=A8me?=", "Café crème", id="utf8-q"),
        pytest.param(
            f"=?koi8-r?B?{b64('Отчёт за май'.encode('koi8-r'))}?=", "Отчёт за май", id="koi8-b"
        ),
        pytest.param("=?windows-1251?Q?=CE=F2=F7=B8=F2?=", "Отчёт", id="cp1251-q"),
        pytest.param(
            f"=?utf-8?B?{b64('Прив'.encode()[:3])}?=\n =?utf-8?B?{b64('Прив'.encode()[3:])}?=",
            "Прив",
            id="adjacent-words-split-multibyte",
        ),
        pytest.param("Re: =?utf-8?Q?=D0=B4=D0=B0?= ok", "Re: да ok", id="mixed-plain-and-encoded"),
        pytest.param(f"=?gb2312?B?{b64('你好世界'.encode('gb2312'))}?=", "你好世界", id="gb2312"),
        pytest.param(f"=?gbk?B?{b64('繁體'.encode('gbk'))}?=", "繁體", id="gbk"),
        pytest.param(
            f"=?shift_jis?B?{b64('こんにちは'.encode('shift_jis'))}?=", "こんにちは", id="sjis"
        ),
        pytest.param(
            f"=?iso-2022-jp?B?{b64('会議'.encode('iso-2022-jp'))}?=", "会議", id="iso2022jp"
        ),
        pytest.param(f"=?ks_c_5601-1987?B?{b64('안녕'.encode('cp949'))}?=", "안녕", id="ks_c_5601"),
        pytest.param(f"=?utf-8*ru?B?{b64('да'.encode())}?=", "да", id="rfc2231-language"),
        pytest.param("=?utf-8?B?0JTQsA?=", "Да", id="b-missing-padding"),
        pytest.param("=?utf-8?Q?unterminated", "=?utf-8?Q?unterminated", id="not-an-encoded-word"),
    ],
)
def test_encoded_subjects(header: str, expected: str) -> None:
    assert parse_message(message(f"Subject: {header}")).subject == expected


@pytest.mark.parametrize(
    ("raw_subject", "expected", "defect"),
    [
        ("Тема письма".encode(), "Тема письма", None),
        ("Тема письма".encode("cp1251"), "Тема письма", "header-8bit:charset-guessed:none->cp1251"),
        ("Тема письма".encode("koi8-r"), "Тема письма", "header-8bit:charset-guessed:none->koi8-r"),
        (
            b"=?x-unknown?B?" + b64("да".encode()).encode() + b"?=",
            "да",
            "encoded-word:charset-fallback",
        ),
    ],
    ids=case_id,
)
def test_8bit_and_unknown_header_charsets(
    raw_subject: bytes, expected: str, defect: str | None
) -> None:
    p = parse_message(message(b"Subject: " + raw_subject))
    assert p.subject == expected
    if defect is None:
        assert not [d for d in p.defects if "charset" in d]
    else:
        assert any(d.startswith(defect) for d in p.defects), p.defects


@pytest.mark.parametrize(
    ("declared", "data", "defect"),
    [
        ("koi8-r", RU.encode("koi8-r"), None),
        ("windows-1251", RU.encode("cp1251"), None),
        ("windows-1251", RU.encode("koi8-r"), "charset-mislabelled:windows-1251->koi8-r"),
        ("koi8-r", RU.encode("cp1251"), "charset-mislabelled:koi8-r->cp1251"),
        ("utf-8", RU.encode("cp1251"), "charset-fallback:utf-8->cp1251"),
        ("utf-8", RU.encode("koi8-r"), "charset-fallback:utf-8->koi8-r"),
        ("us-ascii", RU.encode("utf-8"), "charset-fallback:us-ascii->utf-8"),
        ("x-totally-unknown", RU.encode("utf-8"), "charset-fallback:x-totally-unknown->utf-8"),
        ("x-totally-unknown", RU.encode("cp1251"), "charset-fallback:x-totally-unknown->cp1251"),
        ("zlib", RU.encode("utf-8"), "charset-fallback:zlib->utf-8"),  # not a text codec
        ("cp1251", RU.encode("cp1251"), None),
        ("win-1251", RU.encode("cp1251"), None),
        ('"Windows-1251"', RU.encode("cp1251"), None),
        ("iso-8859-5", RU.encode("iso-8859-5"), None),
        ("x-mac-cyrillic", RU.encode("mac-cyrillic"), None),
        ("unicode-1-1-utf-7", RU.encode("utf-7"), None),
    ],
    ids=case_id,
)
def test_body_charsets_and_mislabels(declared: str, data: bytes, defect: str | None) -> None:
    p = parse_message(text_part(declared, data))
    assert p.text == RU
    charset_defects = [d for d in p.defects if d.startswith("charset")]
    assert charset_defects == ([defect] if defect else [])


@pytest.mark.parametrize(
    ("declared", "text"),
    [
        ("gb2312", "你好，世界"),
        ("gbk", "繁體中文測試"),
        ("gb18030", "你好𠀀"),
        ("shift_jis", "日本語のテキスト"),
        ("iso-2022-jp", "日本語のテキスト"),
        ("ks_c_5601-1987", "한국어 텍스트"),
        ("utf-8", "Ünïcödé ✓"),
    ],
)
def test_cjk_and_utf8_bodies(declared: str, text: str) -> None:
    codec = charsets.lookup_charset(declared)
    assert codec is not None
    p = parse_message(text_part(declared, text.encode(codec)))
    assert (p.text, p.defects) == (text, ("date-missing",))


def test_latin_text_mislabelled_utf8_is_not_taken_for_cyrillic() -> None:
    p = parse_message(text_part("utf-8", "Café naïve Grüße".encode("cp1252")))
    assert p.text == "Café naïve Grüße"
    assert "charset-fallback:utf-8->cp1252" in p.defects


@pytest.mark.parametrize(
    ("date_header", "expected", "defect"),
    [
        (None, INTERNAL, "date-missing"),
        ("Date: next tuesday-ish", INTERNAL, "date-invalid"),
        ("Date: Mon, 32 Jan 2024 10:00:00 +0000", INTERNAL, "date-invalid"),
        ("Date: Mon, 1 Jan 1900 10:00:00 +0000", INTERNAL, "date-invalid"),
        ("Date: Mon, 1 Jan 9999 10:00:00 +0000", INTERNAL, "date-invalid"),
        ("Date: Mon, 1 Jan 2024 10:00:00 +9999", INTERNAL, "date-invalid"),
        ("Date: Mon, 1 Jan 2024 10:00:00 -0000", datetime(2024, 1, 1, 10, tzinfo=UTC), None),
        ("Date: 1 Jan 24 10:00:60 GMT", datetime(2024, 1, 1, 10, 0, 59, tzinfo=UTC), None),
        (
            "Date: Wed, 3 Apr 2024 23:59:01 -0700 (PDT)",
            datetime(2024, 4, 3, 23, 59, 1, tzinfo=timezone(timedelta(hours=-7))),
            None,
        ),
    ],
)
def test_dates(date_header: str | None, expected: datetime, defect: str | None) -> None:
    p = parse_message(message(date_header or "Subject: x"), internaldate=INTERNAL)
    assert p.date == expected
    assert p.date is not None
    assert p.date.tzinfo is not None
    assert (defect in p.defects) if defect else not any(d.startswith("date") for d in p.defects)


def test_date_fallback_without_internaldate_and_naive_internaldate() -> None:
    assert parse_message(message("Subject: x")).date is None
    naive = datetime(2024, 1, 1, 8, 0)
    assert parse_message(message("Subject: x"), internaldate=naive).date == naive.replace(
        tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("headers", "message_id", "in_reply_to", "references"),
    [
        ("Message-ID: <abc@x.com>", "abc@x.com", (), ()),
        ("Message-Id:   < abc@x.com >  ", "abc@x.com", (), ()),
        ("Message-ID: bare-id@x.com", "bare-id@x.com", (), ()),
        ("Message-ID:", None, (), ()),
        (
            "In-Reply-To: <p@x> (Ivan's message of Mon)\n"
            "References: <r1@x>\n\t<r2@x> <r1@x>\n <r3\n @x>",
            None,
            ("p@x",),
            ("r1@x", "r2@x", "r3@x"),
        ),
        ("References: a@x, b@x", None, (), ("a@x", "b@x")),
    ],
)
def test_message_ids(
    headers: str, message_id: str | None, in_reply_to: tuple[str, ...], references: tuple[str, ...]
) -> None:
    p = parse_message(message(headers))
    assert (p.message_id, p.in_reply_to, p.references) == (message_id, in_reply_to, references)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("To: a@x.com, , <b@y.com>", [("", "a@x.com"), ("", "b@y.com")]),
        ('From: "=?utf-8?B?0JjQstCw0L0=?=" <ivan@example.com>', [("Иван", "ivan@example.com")]),
        (
            "From: =?utf-8?Q?=D0=98=D0=B2=D0=B0=D0=BD?= =?utf-8?Q?_=D0=9F?= <ip@x.ru>",
            [("Иван П", "ip@x.ru")],
        ),
        (
            "To: Team: a@x.com, Bob <b@y.com>;, c@z.com",
            [("", "a@x.com"), ("Bob", "b@y.com"), ("", "c@z.com")],
        ),
        ("To: undisclosed-recipients:;", []),
        ('Cc: "Petrov, Ivan" <ip@x.ru>', [("Petrov, Ivan", "ip@x.ru")]),
        (f"From: =?utf-8?B?{b64('Иван <ivan@x.ru>'.encode())}?=", [("Иван", "ivan@x.ru")]),
    ],
)
def test_addresses(header: str, expected: list[tuple[str, str]]) -> None:
    p = parse_message(message(header))
    got = p.from_ or p.to or p.cc
    assert [(a.name, a.email) for a in got] == expected


def test_addresses_raw_8bit_display_name() -> None:
    p = parse_message(message('From: "Иван Петров" <ip@x.ru>'.encode()))
    assert p.from_ == (Address("Иван Петров", "ip@x.ru"),)


def test_addresses_with_and_without_strict_getaddresses(monkeypatch: pytest.MonkeyPatch) -> None:
    real = parsing._getaddresses
    header = message("From: Bob <b@y.com>")

    def old_python(values: list[str], **kwargs: object) -> list[tuple[str, str]]:
        if kwargs:
            raise TypeError("unexpected keyword argument 'strict'")
        return real(values)

    def strict_rejects(values: list[str], strict: bool = True) -> list[tuple[str, str]]:
        return [("", "")] if strict else real(values)

    monkeypatch.setattr(parsing, "_getaddresses", old_python)
    assert parse_message(header).from_ == (Address("Bob", "b@y.com"),)
    monkeypatch.setattr(parsing, "_getaddresses", strict_rejects)
    p = parse_message(header)
    assert p.from_ == (Address("Bob", "b@y.com"),)
    assert "address-lenient-parse" in p.defects


def test_multipart_alternative_and_mixed_attachments() -> None:
    p = parse_message(MIXED)
    assert p.text == "Hello мир"
    assert p.html == "<p>Hello</p>"
    assert p.snippet == "Hello мир"
    got = [
        (a.part_id, a.filename, a.content_type, a.size, a.content_id, a.inline)
        for a in p.attachments
    ]
    assert got == [
        ("2", "отчёт.pdf", "application/pdf", len(b"%PDF-1.4 data"), None, False),
        ("3", "фото.png", "image/png", len(b"\x89PNG...."), "img1@x", True),
        ("4", "документ.bin", "application/octet-stream", 3, None, False),
    ]
    assert p.has_attachments
    assert p.defects == ("date-missing",)


def test_inline_cid_image_alone_is_not_a_paperclip() -> None:
    raw = message(
        "Content-Type: multipart/related; boundary=R",
        b"--R\r\nContent-Type: text/html\r\n\r\n<img src=cid:i>\r\n"
        b"--R\r\nContent-Type: image/gif\r\nContent-ID: <i>\r\n\r\nGIF\r\n--R--\r\n",
    )
    p = parse_message(raw)
    assert [(a.part_id, a.inline, a.content_id) for a in p.attachments] == [("2", True, "i")]
    assert not p.has_attachments


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="=?utf-8?Q?=D0=BE=D1=82=D1=87=D1=91=D1=82.pdf?="', "отчёт.pdf"),
        ("attachment; filename*=utf-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.pdf", "отчёт.pdf"),
        ("attachment; filename*=windows-1251''%EE%F2%F7%B8%F2.pdf", "отчёт.pdf"),
        ("attachment; filename*=''%D0%BE.pdf", "о.pdf"),
        ('attachment; filename="C:\\Users\\me\\report.pdf"', "report.pdf"),
        ('attachment; filename="отчёт.pdf"', "отчёт.pdf"),
        ("attachment", None),
    ],
)
def test_attachment_filenames(disposition: str, expected: str | None) -> None:
    raw = message(
        "Content-Type: multipart/mixed; boundary=B",
        f"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/pdf\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n%PDF\r\n--B--\r\n".encode(),
    )
    (att,) = parse_message(raw).attachments
    assert att.filename == expected


NESTED = message(
    "Subject: fwd\nContent-Type: multipart/mixed; boundary=A",
    b"--A\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--A\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
    b"--B\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=a.zip\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(b"PK\x03\x04zip").encode() + b"\r\n--B--\r\n"
    b"--A\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b64(b"Subject: single\r\n\r\nsingle body").encode()
    + b"\r\n--A--\r\n",
)


def test_nested_message_rfc822() -> None:
    p = parse_message(NESTED)
    assert p.subject == "fwd"
    assert p.text == "see attached"
    got = [(a.part_id, a.content_type) for a in p.attachments]
    assert got == [("2", "message/rfc822"), ("3", "message/rfc822")]
    assert p.has_attachments


@pytest.mark.parametrize(
    ("raw", "part_id", "expected"),
    [
        (MIXED, "2", (b"%PDF-1.4 data", "application/pdf")),
        (MIXED, "3", (b"\x89PNG....", "image/png")),
        (MIXED, "1.1", ("Hello мир".encode(), "text/plain")),
        (MIXED, "1.2", (b"<p>Hello</p>", "text/html")),
        (NESTED, "2.1", (b"inner text", "text/plain")),
        (NESTED, "2.2", (b"PK\x03\x04zip", "application/zip")),
        (NESTED, "3", (b"Subject: single\r\n\r\nsingle body", "message/rfc822")),
        (NESTED, "3.1", (b"single body", "text/plain")),
        (message("Subject: one"), "1", (b"body\n", "text/plain")),
        (MIXED, "9", None),
        (MIXED, "2.1", None),
        (MIXED, "", None),
        (MIXED, "0", None),
        (MIXED, "1..2", None),
        (MIXED, "HEADER", None),
    ],
)
def test_extract_part(raw: bytes, part_id: str, expected: tuple[bytes, str] | None) -> None:
    assert extract_part(raw, part_id) == expected


def test_extract_part_never_raises_on_garbage() -> None:
    junk = b"\x00\xff" * 1000
    assert extract_part(junk, "1") == (junk, "text/plain")
    assert extract_part(b"", "1") == (b"", "text/plain")


def test_base64_body_with_bad_padding_and_quoted_printable() -> None:
    bad = message("Content-Transfer-Encoding: base64", b"0J/RgNC4\r\n0LLQtdGC")  # no padding
    assert parse_message(bad).text == "Привет"
    qp = message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
        b"=D0=9F=D1=80=D0=B8=\r\n=D0=B2=D0=B5=D1=82 =XY",
    )
    assert parse_message(qp).text == "Привет =XY"


@pytest.mark.parametrize(
    ("content_type", "body", "text", "defect"),
    [
        (
            "multipart/mixed; boundary=B",
            b"--B\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\nlast",
            "first\nlast",
            "multipart-missing-closing-boundary",
        ),
        (
            "multipart/mixed",
            b"--sniffed\r\nContent-Type: text/plain\r\n\r\nguessed\r\n--sniffed--\r\n",
            "guessed",
            "multipart-missing-boundary",
        ),
        (
            "multipart/mixed; boundary=B",
            b"no delimiters at all",
            "no delimiters at all",
            "multipart-without-parts",
        ),
        ("multipart/mixed", b"", "", "multipart-missing-boundary"),
        (
            "multipart/mixed; boundary=B",
            b"--B\r\nno headers, no blank line\r\n--B--",
            "no headers, no blank line",
            "header-missing-body-separator",
        ),
    ],
)
def test_broken_multipart(content_type: str, body: bytes, text: str, defect: str) -> None:
    p = parse_message(message(f"Content-Type: {content_type}", body))
    assert p.text == text
    assert defect in p.defects


def test_nul_bytes_are_dropped_from_text() -> None:
    raw = message(b"Subject: a\x00b\nFrom: I\x00van <i@x>", b"body\x00 with \x00nul")
    p = parse_message(raw)
    assert (p.subject, p.from_[0].name, p.text) == ("ab", "Ivan", "body with nul")
    assert extract_part(raw, "1") == (b"body\x00 with \x00nul", "text/plain")


def _timed(raw: bytes, max_parts: int = 2000, max_depth: int = 50) -> tuple[ParsedMessage, float]:
    start = time.perf_counter()
    parsed = parse_message(raw, max_parts=max_parts, max_depth=max_depth)
    return parsed, time.perf_counter() - start


def test_five_megabyte_single_line_body_and_header() -> None:
    p, elapsed = _timed(message("Subject: big", b"a" * 5_000_000))
    assert p.text is not None
    assert len(p.text) == 5_000_000
    assert p.snippet == "a" * 200
    assert elapsed < 2.0
    p, elapsed = _timed(b"Subject: " + b"b" * 5_000_000 + b"\r\n\r\nbody")
    assert p.text == "body"
    assert len(p.subject) <= 256 * 1024
    assert "header-too-long" in p.defects
    assert elapsed < 2.0


def _deep_multipart(levels: int) -> bytes:
    raw = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, levels):
        raw += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i)
    raw += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % (levels - 1)
    return raw + b"".join(b"--b%d--\r\n" % i for i in range(levels - 1, -1, -1))


def _deep_rfc822(levels: int) -> bytes:
    raw = b"Subject: leaf\r\n\r\nleaf body\r\n"
    for i in range(levels):
        raw = b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % i + raw
    return raw


@pytest.mark.parametrize("build", [_deep_multipart, _deep_rfc822])
def test_500_deep_nesting_is_bounded(build: object) -> None:
    assert callable(build)
    p, elapsed = _timed(build(500))
    assert "max-depth-exceeded" in p.defects
    assert elapsed < 1.0
    shallow, _ = _timed(build(10))
    assert "max-depth-exceeded" not in shallow.defects
    limited, _ = _timed(build(10), max_depth=3)
    assert "max-depth-exceeded" in limited.defects


def test_5000_parts_are_bounded() -> None:
    parts = b"".join(
        b"--zz\r\nContent-Type: application/octet-stream; name=f%d.bin\r\n\r\nxx\r\n" % i
        for i in range(5000)
    )
    raw = message("Content-Type: multipart/mixed; boundary=zz", parts + b"--zz--\r\n")
    p, elapsed = _timed(raw)
    assert "max-parts-exceeded" in p.defects
    assert 1000 < len(p.attachments) < 2000
    assert p.attachments[0].filename == "f0.bin"
    assert elapsed < 2.0
    small, _ = _timed(raw, max_parts=10)
    assert len(small.attachments) == 9


def test_html_snippet_strips_scripts_styles_and_comments() -> None:
    markup = (
        "<html><head><title>Newsletter</title><style>p { color: red }</style>"
        "<script>var secret = 1 < 2;</script></head><body><!-- hidden -->"
        "<div>Hello&nbsp;&amp;&#32;welcome</div><p>to&zwnj; the <b>sale</b></p>"
        "<SCRIPT type='x'>alert('x')</SCRIPT></body></html>"
    )
    p = parse_message(message("Content-Type: text/html; charset=utf-8", markup.encode()))
    assert p.text is None
    assert p.html == markup
    assert p.snippet == "Hello & welcome to the sale"
    short = parse_message(message("Content-Type: text/html", markup.encode()), snippet_chars=9)
    assert short.snippet == "Hello &"  # ends on a word boundary, never past snippet_chars


def test_html_charset_from_meta_and_unclosed_script() -> None:
    markup = '<meta charset="windows-1251"><p>Привет</p><script>never closed'.encode("cp1251")
    p = parse_message(message("Content-Type: text/html", markup))
    assert p.snippet == "Привет"


def test_text_snippet_is_collapsed_and_bounded() -> None:
    body = ("word  \r\n\t" * 500).encode()
    p = parse_message(message("Subject: s", body), snippet_chars=23)
    assert p.snippet == "word word word word"


# -- properties ----------------------------------------------------------------------------------

VALID = message(
    'From: "=?utf-8?B?0JjQstCw0L0=?=" <ivan@example.com>\nTo: a@x.com\n'
    "Subject: =?koi8-r?B?8NLJ18XU?=\nDate: Mon, 1 Jan 2024 10:00:00 +0300\nMessage-ID: <m@x>\n"
    'Content-Type: multipart/mixed; boundary="B"',
    b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\nHi =D0=BC\r\n--B\r\nContent-Type: application/pdf; name*=utf-8''%D0%BE.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--B--\r\n",
)
TOKENS = st.sampled_from(
    [b"\r\n", b"\n", b"\r\n\r\n", b"--B", b"--B--", b"=?", b"?=", b"=?utf-8?B?", b"\x00", b"\xff",
     b"Content-Type: multipart/mixed; boundary=B\r\n", b"Content-Type: message/rfc822\r\n\r\n",
     b"Content-Transfer-Encoding: base64\r\n", b";", b'"', b"<", b">", b"(", b":", b" ", b"\t"]
)  # fmt: skip


def _assert_total(raw: bytes) -> None:
    start = time.perf_counter()
    parsed = parse_message(raw, internaldate=INTERNAL)
    assert time.perf_counter() - start < 2.0
    assert isinstance(parsed.defects, tuple)
    for value in (parsed.subject, parsed.snippet, parsed.text or "", parsed.html or ""):
        assert "\x00" not in value
        value.encode("utf-8")  # storable in PostgreSQL text columns
    assert len(parsed.snippet) <= 200
    for part in parsed.attachments:
        assert extract_part(raw, part.part_id) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _assert_total(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(VALID)), st.integers(0, 8), st.one_of(TOKENS, st.binary(max_size=8))
        ),
        max_size=8,
    )
)
def test_mutated_valid_message_never_raises(edits: list[tuple[int, int, bytes]]) -> None:
    raw = VALID
    for pos, cut, insert in edits:
        pos = min(pos, len(raw))
        raw = raw[:pos] + insert + raw[pos + cut :]
    _assert_total(raw)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["Subject", "From", "To", "Date", "References"]))
def test_arbitrary_header_values_never_raise(value: str, name: str) -> None:
    _assert_total(message(f"{name}: {value}".encode("utf-8", "surrogatepass")))
