"""Address syntax without DNS."""

from __future__ import annotations

import pytest

from mailish.domain.addresses import AddressError, normalise_address


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Bob.Smith@Example.COM", "Bob.Smith@example.com"),
        ("a+tag@sub.example.org", "a+tag@sub.example.org"),
        ("юзер@пример.рф", "юзер@xn--e1afmkfd.xn--p1ai"),
        ("a@[127.0.0.1]", "a@[127.0.0.1]"),
        ("demo@localhost", "demo@localhost"),
    ],
)
def test_valid(given: str, expected: str) -> None:
    assert normalise_address(given) == expected


@pytest.mark.parametrize(
    "given",
    ["", "plain", "@example.com", "a@", "a@b@example.com", ".a.@example.com", "a..b@x.org",
     "a b@x.org", "a@-bad-.org", "a@[x\r\nBcc: evil]", "a\r\n@x.org", "a@exa mple.org"],
)  # fmt: skip
def test_invalid(given: str) -> None:
    with pytest.raises(AddressError):
        normalise_address(given)
