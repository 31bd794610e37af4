"""What we log in to a mail server with. Secrets never appear in ``repr`` (and so not in logs)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OAuth2Login:
    """An access token for SASL XOAUTH2 (RFC 7628-style bearer, as Gmail and Outlook use it)."""

    username: str
    access_token: str = field(repr=False)

    def xoauth2(self) -> str:
        return f"user={self.username}\x01auth=Bearer {self.access_token}\x01\x01"


Login = PasswordLogin | OAuth2Login
