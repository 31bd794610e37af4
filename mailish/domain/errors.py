"""The one error hierarchy.

Adapters translate foreign exceptions (asyncpg, ssl, aiosmtplib, httpx) into these at the
boundary with ``raise ... from exc``; callers decide on retries by class alone:

- ``TransientError`` — try again after ``delay`` seconds (network blips, 4xx SMTP replies).
- ``PermanentError`` — retrying cannot help (the server refused the operation).
- ``AuthError`` — the credentials are wrong or revoked; never retried until they change.
- ``Fenced`` — this process no longer owns the bucket; stop work for it at once.
"""

from __future__ import annotations


class MailishError(Exception):
    """Base of every error mailish raises on purpose."""


class ConfigError(MailishError):
    """The configuration or the environment cannot work; raised before anything runs."""


class TransientError(MailishError):
    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(MailishError):
    pass


class AuthError(PermanentError):
    """Login refused: wrong password, revoked token. Retrying would only lock the user out."""


class TLSError(PermanentError):
    """The peer's certificate or TLS negotiation failed verification; never downgraded."""


class Unreachable(TransientError):
    """The host could not be resolved or connected to."""


class ProtocolError(MailishError):
    """The peer broke the protocol (unparseable response, impossible state)."""


class Fenced(MailishError):
    """A write was attempted under a bucket epoch that a newer owner has superseded."""

    def __init__(self, bucket: int, epoch: int, current_epoch: int | None) -> None:
        super().__init__(
            f"bucket {bucket}: epoch {epoch} is fenced (current epoch {current_epoch})"
        )
        self.bucket = bucket
        self.epoch = epoch
        self.current_epoch = current_epoch
