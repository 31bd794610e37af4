"""Where an external mail server lives and how we must talk to it.

The security policy is decided here, purely: implicit TLS and STARTTLS are always allowed,
plaintext only when the dev-only setting says so. Adapters call ``check_policy`` before they
open a socket, so no code path can reach a server in the clear by accident.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

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


def check_policy(endpoint: Endpoint, *, allow_plaintext: bool) -> None:
    if endpoint.security is Security.PLAIN and not allow_plaintext:
        raise PlaintextRefused(
            f"{endpoint}: plaintext connections are disabled (dev only: MAILISH_ALLOW_PLAINTEXT=1)"
        )
