"""The SSRF address policy, table-driven: which addresses count as public, and which host
spellings are really addresses."""

from __future__ import annotations

import ipaddress

import pytest

from mailish.domain.endpoints import normalise_host
from mailish.mail.hosts import is_public, literal_address


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # v4-mapped public stays public
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fd00::1", False),  # unique local
        ("fe80::1%eth0", False),  # link-local with a zone
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # v4-mapped loopback
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated) loopback
        ("::ffff:0:127.0.0.1", False),  # SIIT IPv4-translated loopback
        ("64:ff9b::127.0.0.1", False),  # NAT64 well-known prefix into loopback
        ("64:ff9b::10.0.0.1", False),  # ...and into a private network
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("2002:7f00:1::", False),  # 6to4 of loopback
        ("2001::1", False),  # Teredo
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("deadbeef", None),  # hex needs 0x: a name
        ("1.2.3.4.5", None),
        ("push.example.", None),
    ],
)
def test_literal_address(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found is not None else None) == address


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("imap.GMAIL.com", "imap.gmail.com"),
        ("imap.gmail.com.", "imap.gmail.com"),  # the root's dot
        (" imap.gmail.com ", "imap.gmail.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("mail_1.corp.example", "mail_1.corp.example"),  # DNS allows it; so do we
        ("[::1]", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "2130706433"),  # a name here; resolving it is refused (SSRF)
    ],
)
def test_hosts_are_stored_in_one_form(typed: str, stored: str) -> None:
    assert normalise_host(typed) == stored


@pytest.mark.parametrize(
    "typed",
    ["", ".", "a b", "x/y", "a@b", "a..b", "-a.example", "a-.example", "[a.b]", "[127.0.0.1]",
     "a" * 64 + ".example", ".".join(["a" * 60] * 5), "ex\u00e4mple..com", "http://a.example"],
)  # fmt: skip
def test_what_is_no_host_is_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        normalise_host(typed)
