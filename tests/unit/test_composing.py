"""Tests for mailish.domain.composing: pure, byte-stable composition of outgoing mail.

What is composed is read back with `parse_message` (the parser sync uses) and, where an
independent view of the header structure matters (injection), with the stdlib email parser.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailish.domain.composing import (
    AttachmentIn,
    Composed,
    ComposeError,
    Draft,
    ReplyTo,
    Sender,
    compose,
)
from mailish.domain.parsing import Address, extract_part, parse_message
from mailish.domain.presend import check_limits

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SENDER = Sender("ivan@Example.COM", "Ivan Petrov")
MID = "fixed-id-1@example.com"
RU = "Привет, как дела? Это тестовое сообщение для проверки кодировки."
ALLOWED_HEADERS = {
    "date", "from", "to", "cc", "subject", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "content-id",
}  # fmt: skip


def draft(**changes: object) -> Draft:
    base = Draft(
        to=["anna@example.org"], cc=[], bcc=[], subject="Hello", text="Hi Anna", html=None,
        attachments=[],
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def build(d: Draft | None = None, **kwargs: object) -> Composed:
    options: dict[str, object] = {"now": NOW, "message_id": MID, **kwargs}
    return compose(SENDER, d or draft(), **options)  # type: ignore[arg-type]


def stdlib(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def assert_wire_safe(raw: bytes, *, ascii_only: bool = True) -> None:
    """CRLF only, no line over 998 octets, no NUL, ends with CRLF, 7bit unless told."""
    assert raw.endswith(b"\r\n")
    assert b"\0" not in raw
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(len(line) for line in lines) <= 998
    if ascii_only:
        assert raw.isascii()


def header_lines(raw: bytes, name: bytes) -> list[bytes]:
    """The physical lines of the top-level header `name` (first line and continuations)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(head) if line.lower().startswith(name + b":"))
    end = start + 1
    while end < len(head) and head[end][:1] in (b" ", b"\t"):
        end += 1
    return head[start:end]


def top_headers(raw: bytes) -> list[str]:
    return [key.lower() for key in stdlib(raw)]


def all_header_names(raw: bytes) -> set[str]:
    return {key.lower() for part in stdlib(raw).walk() for key in part}


# ---- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "html", "ctype", "parts", "parsed_text", "parsed_html"),
    [
        ("Hi Anna", None, "text/plain", [], "Hi Anna\r\n", None),
        (None, "<p>Hi</p>", "text/html", [], None, "<p>Hi</p>\r\n"),
        ("Hi", "<p>Hi</p>", "multipart/alternative", ["text/plain", "text/html"], "Hi\r\n",
         "<p>Hi</p>\r\n"),
        (None, None, "text/plain", [], "", None),
        ("", "<p>Hi</p>", "text/html", [], None, "<p>Hi</p>\r\n"),
        ("line 1\nline 2\r\nline 3\r", None, "text/plain", [], "line 1\r\nline 2\r\nline 3\r\n",
         None),
    ],
)  # fmt: skip
def test_body_shapes(
    text: str | None,
    html: str | None,
    ctype: str,
    parts: list[str],
    parsed_text: str | None,
    parsed_html: str | None,
) -> None:
    composed = build(draft(text=text, html=html))
    assert_wire_safe(composed.raw)
    assert stdlib(composed.raw).get_content_type() == ctype
    for number, part_type in enumerate(parts, 1):  # text first, then html
        found = extract_part(composed.raw, str(number))
        assert found is not None
        assert found[1] == part_type
    parsed = parse_message(composed.raw)
    assert (parsed.text, parsed.html) == (parsed_text, parsed_html)
    assert parsed.attachments == ()
    assert parsed.defects == ()


def test_plain_text_message_headers() -> None:
    composed = build()
    assert top_headers(composed.raw) == [
        "date", "from", "to", "subject", "message-id", "mime-version", "content-type",
        "content-transfer-encoding",
    ]  # fmt: skip
    assert composed.raw.startswith(
        b"Date: Mon, 06 May 2024 07:08:09 +0000\r\n"
        b'From: "Ivan Petrov" <ivan@example.com>\r\n'
        b"To: anna@example.org\r\nSubject: Hello\r\nMessage-ID: <fixed-id-1@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
    )
    assert composed.raw.endswith(b"Content-Transfer-Encoding: 7bit\r\n\r\nHi Anna\r\n")
    assert (composed.message_id, composed.envelope_from) == (MID, "ivan@example.com")
    assert composed.recipients == ("anna@example.org",)
    assert not composed.needs_smtputf8
    parsed = parse_message(composed.raw)
    assert parsed.from_ == (Address("Ivan Petrov", "ivan@example.com"),)
    assert parsed.date == NOW
    assert parsed.message_id == MID


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("plain ascii", "7bit"),
        ("Café au lait, s'il vous plaît", "quoted-printable"),
        (RU, "base64"),
        ("x" * 999, "quoted-printable"),  # a 7bit line may not pass 998 octets
        ("a=_b", "quoted-printable"),  # the boundary mark may only appear in boundaries
        ("tab\tand \x0c form feed", "quoted-printable"),
        ("nul \x00 inside", "quoted-printable"),
    ],
)
def test_transfer_encoding_choice(text: str, encoding: str) -> None:
    composed = build(draft(text=text))
    assert_wire_safe(composed.raw)
    assert stdlib(composed.raw)["Content-Transfer-Encoding"] == encoding
    assert parse_message(composed.raw).text == text.replace("\x00", "") + "\r\n"


def test_date_keeps_the_offset_given() -> None:
    msk = datetime(2024, 5, 6, 10, 8, 9, tzinfo=timezone(timedelta(hours=3)))
    composed = build(now=msk)
    assert header_lines(composed.raw, b"date") == [b"Date: Mon, 06 May 2024 10:08:09 +0300"]
    assert parse_message(composed.raw).date == NOW


# ---- attachments ---------------------------------------------------------------------------


def test_attachments_make_multipart_mixed_with_rfc2231_names() -> None:
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 40
    composed = build(
        draft(
            text="see attached",
            attachments=[
                AttachmentIn("C:\\Users\\me\\отчёт за квартал.pdf", "application/pdf", pdf),
                AttachmentIn("notes.txt", "text/plain; charset=koi8-r", b"\xf0\xd2\xc9"),
            ],
        )
    )
    assert_wire_safe(composed.raw)
    assert stdlib(composed.raw).get_content_type() == "multipart/mixed"
    assert b"filename*0*=utf-8''%D0%BE%D1%82%D1%87%D1%91%D1%82" in composed.raw
    parsed = parse_message(composed.raw)
    assert parsed.text == "see attached\r\n"
    got = [(a.part_id, a.filename, a.content_type, a.size, a.inline) for a in parsed.attachments]
    assert got == [
        ("2", "отчёт за квартал.pdf", "application/pdf", len(pdf), False),
        ("3", "notes.txt", "text/plain", 3, False),
    ]
    assert extract_part(composed.raw, "2") == (pdf, "application/pdf")
    assert extract_part(composed.raw, "3") == (b"\xf0\xd2\xc9", "text/plain")
    assert parsed.has_attachments
    assert parsed.defects == ()


def test_inline_image_with_content_id_goes_in_multipart_related() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    composed = build(
        draft(
            text="logo below",
            html='<p><img src="cid:logo@example.com"></p>',
            attachments=[
                AttachmentIn("logo.png", "image/png", png, "<logo@example.com>", inline=True),
                AttachmentIn("a.bin", "application/octet-stream", b"\1\2"),
            ],
        )
    )
    assert_wire_safe(composed.raw)
    shape = [part.get_content_type() for part in stdlib(composed.raw).walk()]
    assert shape == [
        "multipart/mixed", "multipart/related", "multipart/alternative", "text/plain",
        "text/html", "image/png", "application/octet-stream",
    ]  # fmt: skip
    assert b'multipart/related; type="multipart/alternative"' in composed.raw
    assert b"Content-ID: <logo@example.com>\r\n" in composed.raw
    assert b"Content-Disposition: inline;" in composed.raw
    parsed = parse_message(composed.raw)
    got = [(a.part_id, a.filename, a.content_id, a.inline) for a in parsed.attachments]
    assert got == [("1.2", "logo.png", "logo@example.com", True), ("2", "a.bin", None, False)]
    assert extract_part(composed.raw, "1.2") == (png, "image/png")


def test_inline_image_alone_with_html_is_not_a_paperclip() -> None:
    composed = build(
        draft(
            text=None,
            html='<img src="cid:i1">',
            attachments=[AttachmentIn("i.gif", "image/gif", b"GIF89a", "i1", inline=True)],
        )
    )
    assert stdlib(composed.raw).get_content_type() == "multipart/related"
    assert b'type="text/html"' in composed.raw
    parsed = parse_message(composed.raw)
    assert parsed.html == '<img src="cid:i1">\r\n'
    assert not parsed.has_attachments


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("image/PNG", "image/png"),
        ("text/plain; charset=koi8-r", "text/plain"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("garbage", "application/octet-stream"),
        ("", "application/octet-stream"),
        ("image/", "application/octet-stream"),
        ("text/html\r\nBcc: victim@example.net", "application/octet-stream"),
        ("multipart/mixed", "application/octet-stream"),
        ("message/rfc822", "application/octet-stream"),
    ],
)  # fmt: skip
def test_attachment_content_types(given: str, expected: str) -> None:
    composed = build(draft(attachments=[AttachmentIn("f", given, b"data")]))
    assert extract_part(composed.raw, "2") == (b"data", expected)
    assert "bcc" not in all_header_names(composed.raw)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("/home/me/report.pdf", "report.pdf"),
        ("C:\\Users\\me\\отчёт.pdf", "отчёт.pdf"),
        ("invoice\u202efdp.exe", "invoice fdp.exe"),  # no right-to-left override spoofing
        ('a "quoted"; name=x.exe', 'a "quoted"; name=x.exe'),
        ("evil.txt\r\nBcc: victim@example.net", "evil.txt Bcc: victim@example.net"),
        ("d" * 300 + ".docx", "d" * 195 + ".docx"),
        ("..", None),
        ("", None),
        ("dir/", None),
    ],
)
def test_attachment_filenames(given: str, expected: str | None) -> None:
    composed = build(draft(attachments=[AttachmentIn(given, "application/pdf", b"%PDF")]))
    assert_wire_safe(composed.raw)
    (attachment,) = parse_message(composed.raw).attachments
    assert attachment.filename == expected
    assert all_header_names(composed.raw) <= ALLOWED_HEADERS


# ---- headers -------------------------------------------------------------------------------


def test_cyrillic_subject_round_trips_folded_to_78_columns() -> None:
    composed = build(draft(subject=RU * 3))
    lines = header_lines(composed.raw, b"subject")
    assert len(lines) > 3
    assert all(len(line) <= 78 and line.isascii() for line in lines)
    assert lines[0].startswith(b"Subject: =?utf-8?B?")
    assert parse_message(composed.raw).subject == RU * 3


@pytest.mark.parametrize(
    ("subject", "first_line"),
    [
        ("Quarterly report", b"Subject: Quarterly report"),
        ("", b"Subject:"),
        ("looks =?utf-8?B?0J8=?= encoded", b"Subject: =?utf-8?B?"),  # must stay literal
        ("two  spaces", b"Subject: =?utf-8?B?"),  # kept exactly for readers that keep spaces
        ("bell \x07", b"Subject: =?utf-8?B?"),
        ("x" * 1000, b"Subject: =?utf-8?B?"),  # one word too long for a plain line
    ],
)
def test_subject_forms(subject: str, first_line: bytes) -> None:
    composed = build(draft(subject=subject))
    assert_wire_safe(composed.raw)
    assert header_lines(composed.raw, b"subject")[0].startswith(first_line)
    assert parse_message(composed.raw).subject == " ".join(subject.split())


def test_long_ascii_subject_is_folded_at_spaces() -> None:
    subject = " ".join(["word"] * 60)
    composed = build(draft(subject=subject))
    lines = header_lines(composed.raw, b"subject")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert b"=?" not in b"".join(lines)
    assert parse_message(composed.raw).subject == subject


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("Ivan Petrov", b'From: "Ivan Petrov" <ivan@example.com>'),
        ('Ivan "The Great" \\ Petrov',
         b'From: "Ivan \\"The Great\\" \\\\ Petrov" <ivan@example.com>'),
        ("Petrov, Ivan", b'From: "Petrov, Ivan" <ivan@example.com>'),
        ("  Ivan \t Petrov ", b'From: "Ivan Petrov" <ivan@example.com>'),
        (None, b"From: ivan@example.com"),
        ("Иван Петров", b"From: =?utf-8?B?0JjQstCw0L0g0J/QtdGC0YDQvtCy?= <ivan@example.com>"),
    ],
)  # fmt: skip
def test_from_display_names(name: str | None, header: bytes) -> None:
    composed = compose(Sender("ivan@example.com", name), draft(), now=NOW, message_id=MID)
    assert header_lines(composed.raw, b"from") == [header]
    expected = " ".join((name or "").split())
    assert parse_message(composed.raw).from_ == (Address(expected, "ivan@example.com"),)


def test_bcc_is_in_recipients_but_never_in_headers() -> None:
    composed = build(
        draft(
            to=["Anna <anna@Example.ORG>", "bob@example.org"],
            cc=["anna@EXAMPLE.org", '"Carol, C." <carol@example.org>'],
            bcc=["secret@example.net", "Bob@example.org", "bob@example.org"],
        )
    )
    assert composed.recipients == (
        "anna@example.org", "bob@example.org", "carol@example.org", "secret@example.net",
        "Bob@example.org",  # local parts are case-sensitive; domains are not
    )  # fmt: skip
    assert b"secret" not in composed.raw
    assert b"bcc" not in composed.raw.lower()
    parsed = parse_message(composed.raw)
    assert parsed.to == (Address("Anna", "anna@example.org"), Address("", "bob@example.org"))
    assert parsed.cc == (Address("Carol, C.", "carol@example.org"),)
    assert parsed.bcc == ()


def test_many_recipients_fold_and_stay_short() -> None:
    to = [f"Person Number {i} <person.{i}@example.org>" for i in range(100)]
    composed = build(draft(to=to))
    lines = header_lines(composed.raw, b"to")
    assert len(lines) > 50
    assert all(len(line) <= 78 for line in lines)
    assert len(parse_message(composed.raw).to) == 100


def test_reply_headers() -> None:
    parent = ReplyTo("parent@example.org", ("root@example.org", "<mid@example.org>"))
    composed = build(draft(in_reply_to=parent))
    assert header_lines(composed.raw, b"in-reply-to") == [b"In-Reply-To: <parent@example.org>"]
    parsed = parse_message(composed.raw)
    assert parsed.in_reply_to == ("parent@example.org",)
    assert parsed.references == ("root@example.org", "mid@example.org", "parent@example.org")


def test_reply_references_are_capped_keeping_the_root_and_dropping_unsafe_ids() -> None:
    refs = ("root@x", *(f"r{i}@x" for i in range(50)), "bad id@x", "a@b>\r\nBcc: v@x", "")
    composed = build(draft(in_reply_to=ReplyTo("<p@x>", refs)))
    parsed = parse_message(composed.raw)
    assert parsed.references == ("root@x", *(f"r{i}@x" for i in range(32, 50)), "p@x")
    assert all(len(line) <= 78 for line in header_lines(composed.raw, b"references"))
    assert all_header_names(composed.raw) <= ALLOWED_HEADERS
    no_parent = build(draft(in_reply_to=ReplyTo("not a valid id", ("root@x",))))
    assert b"In-Reply-To" not in no_parent.raw
    assert parse_message(no_parent.raw).references == ("root@x",)


def test_non_ascii_local_parts_need_smtputf8() -> None:
    composed = build(draft(to=["Пётр <пётр@пример.рф>"]))
    assert composed.recipients == ("пётр@xn--e1afmkfd.xn--p1ai",)
    assert composed.needs_smtputf8
    assert_wire_safe(composed.raw, ascii_only=False)
    assert parse_message(composed.raw).to == (Address("Пётр", "пётр@xn--e1afmkfd.xn--p1ai"),)


# ---- identity and stability ----------------------------------------------------------------


def test_same_inputs_and_message_id_give_identical_bytes() -> None:
    d = draft(
        text=RU, html=f"<p>{RU}</p>", cc=["c@example.org"],
        attachments=[AttachmentIn("фото.jpg", "image/jpeg", b"\xff\xd8" * 500)],
    )  # fmt: skip
    first, second = build(d), build(d)
    assert first == second
    assert build(d, message_id=f"<{MID}>") == first  # angle brackets are optional
    assert build(replace(d, subject="changed"), message_id=MID).message_id == MID


def test_message_id_is_random_in_the_senders_domain() -> None:
    first = compose(SENDER, draft(), now=NOW)
    second = compose(SENDER, draft(), now=NOW)
    assert re.fullmatch(r"[0-9a-f]{32}@example\.com", first.message_id)
    assert first.message_id != second.message_id
    assert parse_message(first.raw).message_id == first.message_id
    assert compose(SENDER, draft(), now=NOW, message_id=first.message_id).raw == first.raw


def test_drafts_may_have_no_recipients() -> None:
    composed = build(draft(to=[], subject="", text=None), draft_mode=True)
    assert composed.recipients == ()
    assert top_headers(composed.raw)[:4] == ["date", "from", "subject", "message-id"]
    with pytest.raises(ComposeError) as caught:
        build(draft(to=[]))
    assert caught.value.field == "to"


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"to": ["not-an-address"]}, "to[0]"),
        ({"to": ["a@example.org", "bad@"]}, "to[1]"),
        ({"cc": ["x y@example.org"]}, "cc[0]"),
        ({"bcc": ["a@example.org", "b@example.org", "@example.org"]}, "bcc[2]"),
        ({"to": ["a@b@example.org"]}, "to[0]"),
        ({"to": [".a@example.org"]}, "to[0]"),
        ({"to": ["a@[1.2.3.4 Bcc]"]}, "to[0]"),
        ({"to": ["a@exa_mple.org"]}, "to[0]"),
        ({"to": ["Anna\r\n <a@example.org>"]}, "to[0]"),
        ({"to": ["a@example.org\r\nBcc: v@example.net"]}, "to[0]"),
        ({"to": []}, "to"),
        ({"to": [f"u{i}@example.org" for i in range(60)],
          "bcc": [f"v{i}@example.org" for i in range(41)]}, "to"),
        ({"subject": "hi\r\nBcc: victim@example.net"}, "subject"),
        ({"subject": "hi\nthere"}, "subject"),
        ({"subject": "nul\x00"}, "subject"),
        ({"subject": "lone \ud800 surrogate"}, "subject"),
        ({"text": "lone \udfff surrogate"}, "text"),
        ({"html": "<p>\ud800</p>"}, "html"),
        ({"attachments": [AttachmentIn("a.png", "image/png", b"", content_id="a b")]},
         "attachments[0].content_id"),
        ({"attachments": [AttachmentIn("ok", "a/b", b""),
                          AttachmentIn("a", "a/b", b"", content_id="<x>\r\nBcc: v@x")]},
         "attachments[1].content_id"),
        ({"attachments": [AttachmentIn("\ud800.png", "image/png", b"")]},
         "attachments[0].filename"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ComposeError) as caught:
        build(draft(**changes))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("sender", "kwargs", "field"),
    [
        (Sender("nobody", None), {}, "sender.address"),
        (Sender("ivan@example.com\r\nBcc: v@x", None), {}, "sender.address"),
        (Sender("ivan@example.com", "Ivan\r\nBcc: victim@example.net"), {}, "sender.display_name"),
        (Sender("ivan@example.com", "Ivan\n"), {}, "sender.display_name"),
        (SENDER, {"message_id": "no-at-sign"}, "message_id"),
        (SENDER, {"message_id": "a@b\r\nBcc: v@x"}, "message_id"),
        (SENDER, {"message_id": "<@example.com>"}, "message_id"),
        (SENDER, {"now": datetime(2024, 5, 6, 7, 8, 9)}, "now"),
    ],
)  # fmt: skip
def test_sender_and_option_errors(sender: Sender, kwargs: dict[str, object], field: str) -> None:
    options: dict[str, object] = {"now": NOW, "message_id": MID, **kwargs}
    with pytest.raises(ComposeError) as caught:
        compose(sender, draft(), **options)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_size_limit_names_the_size() -> None:
    d = draft(attachments=[AttachmentIn("a.bin", "application/octet-stream", b"x" * 3000)])
    size = len(build(d).raw)
    assert len(build(d, max_size=size).raw) == size
    with pytest.raises(ComposeError) as caught:
        build(d, max_size=size - 1)
    assert caught.value.field == "size"
    assert str(size) in caught.value.message
    with pytest.raises(ComposeError) as early:  # refused before the base64 copy is made
        build(d, max_size=3999)
    assert early.value.field == "size"
    assert "4000" in early.value.message


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Bcc: victim@example.net"},
        {"to": ['"Anna\\" <x@y>, Bcc: victim@example.net" <anna@example.org>']},
        {"to": ["Anna Bcc: victim@example.net <anna@example.org>"]},
        {"attachments": [AttachmentIn("x\r\n\r\n--=_boundary\r\nBcc: v@x", "text/plain", b"")]},
        {"attachments": [AttachmentIn('x"; filename="evil.exe', "text/plain", b"")]},
        {"text": "body\r\n\r\nBcc: victim@example.net\r\n--=_fake--"},
    ],
)
def test_injection_attempts_add_no_header(changes: dict[str, object]) -> None:
    composed = build(draft(**changes))
    assert_wire_safe(composed.raw)
    assert all_header_names(composed.raw) <= ALLOWED_HEADERS
    assert not re.search(rb"(?im)^bcc:", composed.raw.split(b"\r\n\r\n", 1)[0])
    parsed = parse_message(composed.raw)
    assert parsed.bcc == ()
    assert parsed.to[0].email == "anna@example.org"
    assert len(parsed.to) == 1
    assert parsed.defects == ()


# ---- pre-send limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "max_size", "max_recipients", "reasons"),
    [
        (["a@x.org"], 10_000, 5, []),
        (["a@x.org"], 10, 5, ["the message is {size} bytes; the limit is 10 bytes"]),
        (["a@x.org", "b@x.org", "c@x.org"], 10_000, 2,
         ["the message has 3 recipients; the limit is 2"]),
        ([], 10_000, 5, ["the message has no recipients"]),
    ],
)  # fmt: skip
def test_check_limits(
    to: list[str], max_size: int, max_recipients: int, reasons: list[str]
) -> None:
    composed = build(draft(to=to), draft_mode=True)
    expected = [reason.format(size=len(composed.raw)) for reason in reasons]
    assert check_limits(composed, max_size=max_size, max_recipients=max_recipients) == expected


# ---- properties ----------------------------------------------------------------------------

no_breaks = st.text().filter(lambda s: not any(c in s for c in "\r\n\x00"))
UNSAFE_IN_FILENAMES = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


def parsed_body(text: str) -> str:
    """What the parser returns for a composed body: CRLF lines with a final line break, then
    its own clean-up (a leading BOM dropped, NUL characters dropped)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    if lines and not lines.endswith("\n"):
        lines += "\n"
    return lines.removeprefix("\ufeff").replace("\x00", "").replace("\n", "\r\n")


def parsed_filename(name: str) -> str | None:
    """The base name without controls or bidi overrides, as the parser shows it (its
    whitespace collapsed)."""
    base = UNSAFE_IN_FILENAMES.sub(" ", name).replace("\\", "/").rsplit("/", 1)[-1]
    shown = " ".join(base.split())
    return None if shown in ("", ".", "..") else shown


@settings(max_examples=200, deadline=None)
@given(subject=no_breaks, text=st.text(), html=st.one_of(st.none(), st.text()))
def test_any_subject_and_body_compose_to_wire_safe_bytes_that_parse_back(
    subject: str, text: str, html: str | None
) -> None:
    composed = build(draft(subject=subject, text=text, html=html))
    assert_wire_safe(composed.raw)
    assert all(len(line) <= 78 for line in header_lines(composed.raw, b"subject"))
    parsed = parse_message(composed.raw)
    assert parsed.subject == re.sub(r"\s+", " ", subject).strip()
    assert parsed.text == (parsed_body(text) if text or not html else None)
    assert parsed.html == (parsed_body(html) if html else None)
    assert build(draft(subject=subject, text=text, html=html)).raw == composed.raw


@settings(max_examples=200, deadline=None)
@given(filename=st.text(max_size=150), data=st.binary(max_size=300), inline=st.booleans())
def test_any_filename_composes_and_round_trips(filename: str, data: bytes, inline: bool) -> None:
    attachment = AttachmentIn(filename, "application/pdf", data, inline=inline)
    composed = build(draft(attachments=[attachment]))
    assert_wire_safe(composed.raw)
    assert all_header_names(composed.raw) <= ALLOWED_HEADERS
    (info,) = parse_message(composed.raw).attachments
    assert extract_part(composed.raw, info.part_id) == (data, "application/pdf")
    if "=?" not in filename:  # the parser decodes encoded-word look-alikes in any parameter
        assert info.filename == parsed_filename(filename)


@settings(max_examples=200, deadline=None)
@given(name=no_breaks)
def test_any_display_name_round_trips(name: str) -> None:
    to = re.sub(r'[\\"<>]', "", name) + " <anna@example.org>"  # "Name <addr>" as the app sends
    composed = compose(Sender("ivan@example.com", name), draft(to=[to]), now=NOW)
    assert_wire_safe(composed.raw)
    parsed = parse_message(composed.raw)
    assert parsed.from_[0].name == re.sub(r"\s+", " ", name).strip()
    assert parsed.to[0].email == "anna@example.org"
