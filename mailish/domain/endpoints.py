"""Where an external mail server lives and how we must talk to it.

The security policy is decided here, purely: implicit TLS and STARTTLS are always allowed,
plaintext only when the dev-only setting says so. Adapters call ``check_policy`` before they
open a socket, so no code path can reach a server in the clear by accident.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailish.domain.errors import PermanentError


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


def check_policy(endpoint: Endpoint, *, allow_plaintext: bool) -> None:
    if endpoint.security is Security.PLAIN and not allow_plaintext:
        raise PlaintextRefused(
            f"{endpoint}: plaintext connections are disabled (dev only: MAILISH_ALLOW_PLAINTEXT=1)"
        )
