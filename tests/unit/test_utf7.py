"""IMAP modified UTF-7: RFC examples, one canonical spelling per name, every malformed class."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailish.domain.utf7 import (
    MailboxNameError,
    decode_mailbox_name,
    decode_mailbox_name_lenient,
    encode_mailbox_name,
)

VALID = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),  # RFC 3501 §5.1.3
    ("&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "Отправленные"),
    ("&BCcENQRABD0EPgQyBDgEOgQ4-", "Черновики"),
    ("Entw&APw-rfe", "Entwürfe"),
    ("&AMk-l&AOk-ments envoy&AOk-s", "Éléments envoyés"),
    ("&XfJT0ZAB-", "已发送"),
    ("&2D3eAA-", "😀"),  # astral: one surrogate pair in one run
    ("Fun &2D3eANg93gDYPd4A-", "Fun 😀😀😀"),
    ("&2D3eAA- ", "😀 "),
    ("&-", "&"),
    ("a&-b&-&-", "a&b&&"),
    ("&-&U,A-", "&台"),
    ("&U,A-&-", "台&"),
    ("&AAE-", "\x01"),  # control characters are shifted, never sent raw
    ("&AH8AgA-", "\x7f\x80"),
    ("Sent-Items", "Sent-Items"),  # "-" outside a shift is an ordinary character
    ("[Gmail]/All Mail", "[Gmail]/All Mail"),
]


@pytest.mark.parametrize(("raw", "text"), VALID)
def test_decodes_and_encodes_canonical_names(raw: str, text: str) -> None:
    assert decode_mailbox_name(raw) == text
    assert encode_mailbox_name(text) == raw
    assert _oracle_encode(text) == raw
    assert decode_mailbox_name_lenient(raw) == text


MALFORMED = [
    ("&", "unterminated"),
    ("Sent&", "unterminated"),
    ("&U,BTFw", "unterminated"),
    ("a&U,A-b&", "unterminated"),
    ("&U/A-", "invalid base64 character '/'"),  # plain base64, not modified
    ("&U,A=-", "invalid base64 character '='"),  # padding is not used
    ("&U,A -", "invalid base64 character ' '"),
    ("&U,A.x-", "invalid base64 character '.'"),
    ("&A-", "truncated"),
    ("&AAAAA-", "truncated"),
    ("&U,B-", "padding bits"),  # "台" is &U,A-; the last character carries garbage bits
    ("&AMn-", "padding bits"),
    ("&AA-", "odd number of bytes"),
    ("&U,BTFwA-", "odd number of bytes"),
    ("&AGE-", "printable ASCII 'a'"),
    ("&ACY-", "printable ASCII '&'"),  # "&" must be written "&-"
    ("&ACA-", "printable ASCII ' '"),
    ("&AOkAYQ-", "printable ASCII 'a'"),
    ("&U,A-&ZeU-", "adjacent shifted runs"),
    ("&2D0-", "high surrogate without low"),
    ("&2D3YPQ-", "high surrogate without low"),
    ("&2D0AYQ-", "high surrogate without low"),
    ("&3gA-", "low surrogate without high"),
    ("&3gDYPQ-", "low surrogate without high"),
    ("&AAA-", "NUL"),
    ("Отправленные", "must be shifted"),  # UTF-8 sent by a server without UTF8=ACCEPT
    ("tab\there", "must be shifted"),
    ("x\x00", "must be shifted"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_rejects_malformed_names(raw: str, reason: str) -> None:
    with pytest.raises(MailboxNameError) as info:
        decode_mailbox_name(raw)
    assert reason in str(info.value)
    assert repr(raw) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.text == raw
    assert info.value.offset is not None
    assert 0 <= info.value.offset < len(raw)
    assert decode_mailbox_name_lenient(raw) == raw


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\ud83d", "lone surrogate"),
        ("a\ude00b", "lone surrogate"),
        ("\ud83d\ude00", "lone surrogate"),  # a pair spelled as two code points is still two
        ("a\x00", "NUL"),
    ],
)
def test_encode_rejects_unencodable_text(text: str, reason: str) -> None:
    with pytest.raises(MailboxNameError, match=reason):
        encode_mailbox_name(text)


def _is_direct(char: str) -> bool:
    return " " <= char <= "~"


def _oracle_encode(text: str) -> str:
    """Independent encoder: stdlib base64 of UTF-16BE per shifted run, spelled as RFC 3501."""
    out = []
    for direct, run in itertools.groupby(text, key=_is_direct):
        chunk = "".join(run)
        if direct:
            out.append(chunk.replace("&", "&-"))
        else:
            b64 = base64.b64encode(chunk.encode("utf-16-be")).decode("ascii")
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
    return "".join(out)


encodable = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
names = st.text(
    st.one_of(
        encodable,
        st.sampled_from("&-+,/ ~AaZz09"),
        st.characters(min_codepoint=0x10000),  # astral, needs surrogate pairs
        st.characters(min_codepoint=0x0400, max_codepoint=0x04FF),
    )
)


@given(names)
@example("&😀&-")
@example("a" * 50 + "日本" * 30)
def test_round_trip_of_arbitrary_text(text: str) -> None:
    raw = encode_mailbox_name(text)
    assert all(_is_direct(char) for char in raw)
    assert raw == _oracle_encode(text)
    assert decode_mailbox_name(raw) == text
    assert decode_mailbox_name_lenient(raw) == text


wire_like = st.text(st.sampled_from("&-ABCDU,+/=2Da3gZeAMP0 x\x01é"), max_size=24)


@st.composite
def mutated_wire_names(draw: st.DrawFn) -> str:
    """A canonical wire name with one character replaced, inserted or removed: near misses."""
    raw = encode_mailbox_name(draw(names.filter(bool)))
    index = draw(st.integers(0, len(raw) - 1))
    char = draw(st.sampled_from("&-A/,+=a ") | st.characters())
    edit = draw(st.sampled_from(["replace", "insert", "delete"]))
    if edit == "replace":
        return raw[:index] + char + raw[index + 1 :]
    if edit == "insert":
        return raw[:index] + char + raw[index:]
    return raw[:index] + raw[index + 1 :]


@given(st.one_of(wire_like, mutated_wire_names(), st.text()))
@example("&U,A-&-&ZeU-")
def test_strict_decoder_accepts_only_canonical_spellings(raw: str) -> None:
    try:
        text = decode_mailbox_name(raw)
    except MailboxNameError:
        assert decode_mailbox_name_lenient(raw) == raw
    else:
        assert encode_mailbox_name(text) == raw
        assert decode_mailbox_name_lenient(raw) == text


@given(st.one_of(wire_like, mutated_wire_names(), st.text()))
def test_lenient_decoder_never_raises(raw: str) -> None:
    assert isinstance(decode_mailbox_name_lenient(raw), str)
