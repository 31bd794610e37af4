"""Reading Thunderbird autoconfig XML (ISPDB and ``config-v1.1.xml``), purely.

The XML comes from servers the *user's domain* controls, so it is hostile input:

- It is parsed with defusedxml and ``forbid_dtd=True``: any ``<!DOCTYPE>`` is rejected before
  entities exist, so external entities (XXE, reading local files or fetching URLs) and
  entity expansion (billion laughs) are impossible, not merely bounded.
- Only the fields we need are read; unknown elements are ignored, bad ports or host names skip
  the one server entry rather than failing the whole document.

Server choice is a pure ranking: implicit TLS before STARTTLS, plaintext only when the
dev-only allowance is on, document order breaking ties (the provider lists its favourite
first).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml  # type: ignore[import-untyped]
import defusedxml.ElementTree as safe_et  # type: ignore[import-untyped]

from mailish.domain.endpoints import Endpoint, Security

MAX_DOCUMENT = 1 << 20

_SOCKET_TYPES = {"SSL": Security.TLS, "TLS": Security.TLS, "STARTTLS": Security.STARTTLS}
_RANK = {Security.TLS: 0, Security.STARTTLS: 1, Security.PLAIN: 2}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AutoconfigXmlError(ValueError):
    """The document is not a usable autoconfig document (malformed, DTD, no servers)."""


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """One ``incomingServer``/``outgoingServer`` with placeholders already filled."""

    endpoint: Endpoint
    username: str


@dataclass(frozen=True, slots=True)
class ClientConfig:
    imap: tuple[ServerEntry, ...]
    smtp: tuple[ServerEntry, ...]


@dataclass(frozen=True, slots=True)
class Address:
    """An e-mail address split for discovery; ``domain`` is lower-case IDNA (ASCII)."""

    text: str
    local: str
    domain: str


def split_address(address: str) -> Address:
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an e-mail address: {address!r}")
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"invalid domain in {address!r}") from exc
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL.match(x) for x in labels):
        raise ValueError(f"invalid domain in {address!r}")
    return Address(address.strip(), local, ascii_domain)


def fill(template: str, address: Address) -> str:
    """Replace the placeholders the autoconfig format defines."""
    return (
        template.replace("%EMAILADDRESS%", address.text)
        .replace("%EMAILLOCALPART%", address.local)
        .replace("%EMAILDOMAIN%", address.domain)
    )


def parse_client_config(data: bytes, address: Address) -> ClientConfig:
    if len(data) > MAX_DOCUMENT:
        raise AutoconfigXmlError("document too large")
    try:
        root: ET.Element = safe_et.fromstring(data, forbid_dtd=True)
    except (ET.ParseError, defusedxml.DefusedXmlException) as exc:
        raise AutoconfigXmlError(f"unreadable XML ({type(exc).__name__}: {exc})") from exc
    if root.tag != "clientConfig":
        raise AutoconfigXmlError(f"root element is <{root.tag}>, not <clientConfig>")
    imap: list[ServerEntry] = []
    smtp: list[ServerEntry] = []
    for provider in root.iter("emailProvider"):
        for element in provider:
            if element.tag == "incomingServer" and element.get("type") == "imap":
                _append(imap, element, address)
            elif element.tag == "outgoingServer" and element.get("type") == "smtp":
                _append(smtp, element, address)
    if not imap and not smtp:
        raise AutoconfigXmlError("no usable IMAP or SMTP server in the document")
    return ClientConfig(tuple(imap), tuple(smtp))


def _append(into: list[ServerEntry], element: ET.Element, address: Address) -> None:
    host = fill((element.findtext("hostname") or "").strip(), address).lower()
    socket_type = (element.findtext("socketType") or "").strip().upper()
    security = _SOCKET_TYPES.get(socket_type, Security.PLAIN)
    username = fill((element.findtext("username") or "%EMAILADDRESS%").strip(), address)
    try:
        port = int((element.findtext("port") or "").strip())
        into.append(ServerEntry(Endpoint(host, port, security), username))
    except ValueError:
        return  # one broken entry; the others may still be good


def pick(entries: tuple[ServerEntry, ...], *, allow_plaintext: bool) -> ServerEntry | None:
    """The best entry by security (stable, so document order breaks ties)."""
    usable = [e for e in entries if allow_plaintext or e.endpoint.security is not Security.PLAIN]
    return min(usable, key=lambda e: _RANK[e.endpoint.security], default=None)
