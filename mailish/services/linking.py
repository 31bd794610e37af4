"""Linking an external mailbox: prove the login works, then store the account, encrypted.

Nothing is written until both logins succeed, so a wrong password or an unreachable server
leaves no trace. Failures carry a machine-readable ``code`` (``auth_failed``, ``tls_failed``,
``unreachable``, ``invalid_settings``, ``already_linked``) and a human ``detail``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mailish.domain.buckets import bucket_for
from mailish.domain.endpoints import Endpoint, PlaintextRefused
from mailish.domain.errors import AuthError, MailishError, ProtocolError, TLSError, Unreachable
from mailish.domain.ids import AccountId, new_account_id
from mailish.domain.logins import Login, OAuth2Login, PasswordLogin
from mailish.mail import smtp
from mailish.mail.credentials import KeyRing
from mailish.mail.hosts import ForbiddenAddress
from mailish.mail.imap.connection import ConnectionLost, ImapConnection
from mailish.mail.oauth.broker import TokenGrant
from mailish.mail.policy import ConnectionPolicy
from mailish.services.oauth_login import OAUTH2, oauth_secret
from mailish.store import accounts, tokens
from mailish.store.connecting import Pool

log = logging.getLogger(__name__)


class LinkError(MailishError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class OAuthLink:
    """An OAuth2 grant obtained for linking: the provider it came from and its tokens."""

    provider: str
    grant: TokenGrant


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRequest:
    """What to link: the servers and exactly one of a password or an OAuth2 grant."""

    email: str
    imap: Endpoint
    smtp: Endpoint | None
    password: str | None = None
    oauth: OAuthLink | None = None
    display_name: str | None = None
    username: str | None = None

    def __post_init__(self) -> None:
        if (self.password is None) == (self.oauth is None):
            raise ValueError("give either a password or an OAuth2 grant")

    def __repr__(self) -> str:
        return f"LinkRequest(email={self.email!r}, imap={self.imap}, smtp={self.smtp})"

    @property
    def auth_kind(self) -> str:
        return OAUTH2 if self.oauth is not None else "password"

    def login(self) -> Login:
        username = self.username or self.email
        if self.oauth is not None:
            return OAuth2Login(username, self.oauth.grant.access_token)
        assert self.password is not None  # __post_init__
        return PasswordLogin(username, self.password)

    def secret(self) -> dict[str, str]:
        """What gets sealed into the account row."""
        if self.oauth is not None:
            return oauth_secret(self.oauth.provider, self.oauth.grant, username=self.username)
        assert self.password is not None
        secret = {"password": self.password}
        if self.username:
            secret["username"] = self.username
        return secret


@dataclass(frozen=True, slots=True)
class Linked:
    account_id: AccountId
    token: str
    bucket: int


def _classify(exc: BaseException) -> LinkError:
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, AuthError):
        return LinkError("auth_failed", str(exc))
    if isinstance(exc, TLSError):
        return LinkError("tls_failed", str(exc))
    if isinstance(exc, ForbiddenAddress | PlaintextRefused | ValueError):
        return LinkError("invalid_settings", str(exc))
    if isinstance(exc, Unreachable | ConnectionLost | OSError | ProtocolError):
        return LinkError("unreachable", str(exc))
    return LinkError("unreachable", f"{type(exc).__name__}: {exc}")


async def verify_imap(request: LinkRequest, policy: ConnectionPolicy) -> None:
    try:
        conn = await ImapConnection.open(policy.imap(request.imap))
    except Exception as exc:
        raise _classify(exc) from exc
    try:
        await conn.login(request.login())
    except Exception as exc:
        raise _classify(exc) from exc
    finally:
        await conn.logout()


async def verify_smtp(request: LinkRequest, policy: ConnectionPolicy) -> None:
    if request.smtp is None:
        return
    try:
        await smtp.verify_login(policy.smtp(request.smtp), request.login())
    except Exception as exc:
        raise _classify(exc) from exc


async def link(
    pool: Pool,
    request: LinkRequest,
    *,
    keyring: KeyRing,
    policy: ConnectionPolicy,
    buckets: int,
) -> Linked:
    """Verify IMAP and SMTP logins, then create the account and its first API token."""
    async with pool.acquire() as conn:
        if await accounts.find_by_email(conn, email=request.email) is not None:
            raise LinkError("already_linked", f"{request.email} is already linked")
    await verify_imap(request, policy)
    await verify_smtp(request, policy)
    account_id = new_account_id()
    sealed = keyring.encrypt(account_id, request.secret())
    settings: dict[str, Any] = {"imap": request.imap.as_json()}
    if request.smtp is not None:
        settings["smtp"] = request.smtp.as_json()
    bucket = bucket_for(account_id, buckets)
    async with pool.acquire() as conn, conn.transaction():
        if await accounts.find_by_email(conn, email=request.email) is not None:
            raise LinkError("already_linked", f"{request.email} is already linked")
        await accounts.create(
            conn, account_id=account_id, email=request.email, display_name=request.display_name,
            bucket=bucket, provider=request.oauth.provider if request.oauth else None,
            settings=settings, auth_kind=request.auth_kind,
            credentials=sealed, key_id=keyring.primary,
        )  # fmt: skip
        token = await tokens.issue(conn, account_id=account_id, label="linked")
    log.info("linked account", extra={"account_id": str(account_id), "bucket": bucket})
    return Linked(account_id, token, bucket)
