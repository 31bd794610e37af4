"""Where an external mail server lives and how we must talk to it.

The security policy is decided here, purely: implicit TLS and STARTTLS are always allowed,
plaintext only when the dev-only setting says so. Adapters call ``check_policy`` before they
open a socket, so no code path can reach a server in the clear by accident.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import idna

from mailish.domain.errors import PermanentError

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class Security(enum.StrEnum):
    TLS = "tls"
    STARTTLS = "starttls"
    PLAIN = "plain"


class PlaintextRefused(PermanentError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    security: Security

    def __post_init__(self) -> None:
        if not self.host or len(self.host) > 253 or any(c.isspace() for c in self.host):
            raise ValueError(f"invalid host {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port}")

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.security.value})"

    def as_json(self) -> dict[str, Any]:
        """How an endpoint is stored (``accounts.settings``) and shown."""
        return {"host": self.host, "port": self.port, "security": self.security.value}

    @classmethod
    def from_json(cls, value: Any) -> Endpoint:
        """The inverse of ``as_json``; ``ValueError`` names what is wrong."""
        try:
            return cls(str(value["host"]), int(value["port"]), Security(value["security"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None


def normalise_host(text: str) -> str:
    """A server host as the user typed it, in the one form we store and connect to: an IP
    address (``[::1]`` loses its brackets) or a lower-case ASCII host name (IDNA for
    international names). ``ValueError`` says what is wrong. Whether the address may be
    reached is decided when it is resolved (``mail.hosts.resolve_checked``), so spellings
    such as ``2130706433`` pass here as names and are refused there."""
    host = text.strip().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv6 address in brackets") from None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    ascii_host = host.lower()
    if not host.isascii():
        try:
            ascii_host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"{text!r} is not a host name ({exc})") from None
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(p) for p in ascii_host.split(".")):
        raise ValueError(f"{text!r} is not a host name")
    return ascii_host


def check_policy(endpoint: Endpoint, *, allow_plaintext: bool) -> None:
    if endpoint.security is Security.PLAIN and not allow_plaintext:
        raise PlaintextRefused(
            f"{endpoint}: plaintext connections are disabled (dev only: MAILISH_ALLOW_PLAINTEXT=1)"
        )
