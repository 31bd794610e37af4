"""Autoconfig XML: placeholders, server ranking, and hostile documents."""

from __future__ import annotations

import time

import pytest

from mailish.domain import autoconfig_xml as xml
from mailish.domain.endpoints import Endpoint, Security

ADDRESS = xml.split_address("Ann.Lee@Example.ORG")


def document(*servers: str) -> bytes:
    return (
        '<?xml version="1.0"?><clientConfig version="1.1"><emailProvider id="example.org">'
        + "".join(servers)
        + "</emailProvider></clientConfig>"
    ).encode()


def server(
    kind: str, host: str, port: object, socket_type: str, user: str = "%EMAILADDRESS%"
) -> str:
    tag, proto = ("incomingServer", "imap") if kind == "in" else ("outgoingServer", "smtp")
    return (
        f'<{tag} type="{proto}"><hostname>{host}</hostname><port>{port}</port>'
        f"<socketType>{socket_type}</socketType><username>{user}</username></{tag}>"
    )


def test_split_address_normalises_the_domain() -> None:
    assert xml.Address("Ann.Lee@Example.ORG", "Ann.Lee", "example.org") == ADDRESS
    assert xml.split_address("u@пример.рф").domain == "xn--e1afmkfd.xn--p1ai"


@pytest.mark.parametrize(
    "bad", ["", "no-at", "@example.org", "u@", "u@localhost", "u@a..b", "u@-a.b"]
)
def test_split_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"address|domain"):
        xml.split_address(bad)


def test_placeholders_are_filled() -> None:
    config = xml.parse_client_config(
        document(
            server("in", "imap.%EMAILDOMAIN%", 993, "SSL", "%EMAILLOCALPART%"),
            server("out", "smtp.%EMAILDOMAIN%", 587, "STARTTLS"),
        ),
        ADDRESS,
    )
    assert config.imap == (
        xml.ServerEntry(Endpoint("imap.example.org", 993, Security.TLS), "Ann.Lee"),
    )
    assert config.smtp[0].username == "Ann.Lee@Example.ORG"
    assert config.smtp[0].endpoint.security is Security.STARTTLS


def test_ssl_beats_starttls_and_plain_is_refused_unless_allowed() -> None:
    config = xml.parse_client_config(
        document(
            server("in", "plain.example.org", 143, "plain"),
            server("in", "starttls.example.org", 143, "STARTTLS"),
            server("in", "ssl.example.org", 993, "SSL"),
            server("in", "ssl2.example.org", 993, "SSL"),
        ),
        ADDRESS,
    )
    best = xml.pick(config.imap, allow_plaintext=False)
    assert best is not None and best.endpoint.host == "ssl.example.org"  # document order ties
    only_plain = xml.parse_client_config(
        document(server("in", "p.example.org", 143, "plain")), ADDRESS
    )
    assert xml.pick(only_plain.imap, allow_plaintext=False) is None
    allowed = xml.pick(only_plain.imap, allow_plaintext=True)
    assert allowed is not None and allowed.endpoint.security is Security.PLAIN


def test_broken_entries_are_skipped_not_fatal() -> None:
    config = xml.parse_client_config(
        document(
            server("in", "a.example.org", "nine", "SSL"),
            server("in", "", 993, "SSL"),
            server("in", "b.example.org", 70000, "SSL"),
            server("in", "good.example.org", 993, "SSL"),
            '<incomingServer type="pop3"><hostname>pop.example.org</hostname></incomingServer>',
        ),
        ADDRESS,
    )
    assert [e.endpoint.host for e in config.imap] == ["good.example.org"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<clientConfig><emailProvider>", "unreadable"),
        (b"not xml at all", "unreadable"),
        (b"<html><body>hi</body></html>", "root element"),
        (b"<clientConfig/>", "no usable"),
        (b"x" * (xml.MAX_DOCUMENT + 1), "too large"),
    ],
)
def test_malformed_documents(data: bytes, reason: str) -> None:
    with pytest.raises(xml.AutoconfigXmlError, match=reason):
        xml.parse_client_config(data, ADDRESS)


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE clientConfig [ <!ENTITY secret SYSTEM "file:///etc/passwd"> ]>
<clientConfig><emailProvider><incomingServer type="imap"><hostname>&secret;</hostname>
<port>993</port><socketType>SSL</socketType></incomingServer></emailProvider></clientConfig>"""

LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b']><clientConfig><emailProvider><incomingServer type="imap"><hostname>&lol9;'
    b"</hostname></incomingServer></emailProvider></clientConfig>"
)


@pytest.mark.parametrize("data", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_dtds_are_refused_before_any_entity_exists(data: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(xml.AutoconfigXmlError, match="DTDForbidden"):
        xml.parse_client_config(data, ADDRESS)
    assert time.monotonic() - started < 0.5
