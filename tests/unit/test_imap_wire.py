"""The IMAP response parser: values, sections, literals and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailish.domain.errors import ProtocolError
from mailish.mail.imap import wire


def raw(*parts: bytes) -> wire.RawResponse:
    """Segments and literals alternate: raw(b"line {3}", b"abc", b")")."""
    return wire.RawResponse(list(parts[0::2]), list(parts[1::2]))


def test_status_with_code() -> None:
    r = wire.parse(raw(b"A1 OK [UIDVALIDITY 1234] done"))
    assert r == wire.StatusResponse("A1", "OK", "UIDVALIDITY", ("1234",), "done")
    bye = wire.parse(raw(b"* BYE shutting down"))
    assert isinstance(bye, wire.StatusResponse) and bye.tag is None and bye.status == "BYE"


def test_capability_and_continuation() -> None:
    caps = wire.parse(raw(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN"))
    assert caps == wire.DataResponse("CAPABILITY", None, ("IMAP4rev1", "IDLE", "AUTH=PLAIN"))
    assert wire.parse(raw(b"+ go ahead")) == wire.Continuation("go ahead")


def test_list_with_quoted_and_nil() -> None:
    r = wire.parse(raw(b'* LIST (\\HasNoChildren \\Sent) "/" "Sent \\"Items\\""'))
    assert r == wire.DataResponse(
        "LIST", None, (["\\HasNoChildren", "\\Sent"], "/", 'Sent "Items"')
    )
    r = wire.parse(raw(b"* LIST (\\Noselect) NIL foo"))
    assert isinstance(r, wire.DataResponse) and r.values[1] is None


def test_fetch_with_literals_and_sections() -> None:
    r = wire.parse(
        raw(
            b"* 12 FETCH (UID 7 FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {10}",
            b"Subject: x",
            b" BODY[]<0> {3}",
            b"abc",
            b")",
        )
    )
    assert isinstance(r, wire.DataResponse) and (r.kind, r.number) == ("FETCH", 12)
    items = wire.flatten_pairs(r.values[0])  # type: ignore[arg-type]
    assert items == {
        "UID": "7",
        "FLAGS": ["\\Seen"],
        "BODY[HEADER.FIELDS (SUBJECT)]": b"Subject: x",
        "BODY[]<0>": b"abc",
    }


@pytest.mark.parametrize(
    "line",
    [b"* 1 FETCH (UID 1", b"* 1 FETCH UID 1)", b'* LIST () "/" "unterminated', b"garbage", b""],
)
def test_malformed_responses_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.parse(raw(line))


def test_deep_nesting_is_capped_without_recursion() -> None:
    with pytest.raises(ProtocolError, match="deeply"):
        wire.parse(raw(b"* 1 FETCH " + b"(" * 100_000 + b")" * 100_000))


@pytest.mark.parametrize("line", [b"* 1 FETCH (BODY[] {99999999999}", b"x {1" + b"9" * 20 + b"}"])
def test_claimed_literal_sizes_are_bounded(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.literal_size(line, limit=64 << 20)


def test_literal_size() -> None:
    assert wire.literal_size(b"* 1 FETCH (BODY[] {42}", limit=100) == 42
    assert wire.literal_size(b"A1 APPEND x {42+}", limit=100) == 42
    assert wire.literal_size(b"* OK no literal", limit=100) is None
    assert wire.literal_size(b"* OK ready {mx.example}", limit=100) is None  # text, not a size


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    line = data.replace(b"\r\n", b" ")
    try:
        wire.parse(raw(line))
    except ProtocolError:
        pass


def test_quote() -> None:
    assert wire.quote('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    with pytest.raises(ValueError, match="literal"):
        wire.quote("пароль")
