"""The one place TLS client contexts are made.

Verification is always on (CERT_REQUIRED + hostname check), TLS 1.2 is the floor, and extra
CA bundles are added to — never substituted for — the system trust store, so a private CA for
a test or corporate server cannot switch verification off for everyone else.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from pathlib import Path

import httpx

from mailish.domain.errors import ConfigError, TLSError


@functools.lru_cache(maxsize=16)
def _cached_context(ca_files: tuple[Path, ...]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    for path in ca_files:
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {path}: {exc}") from exc
    return context


def client_context(ca_files: Sequence[Path] = ()) -> ssl.SSLContext:
    """A verifying client context; cached per CA set (contexts are safe to share)."""
    return _cached_context(tuple(ca_files))


# OpenSSL's X509_V_ERR_* codes for the two failures users most need told apart from
# "untrusted": a certificate for another name, and one past (or before) its validity.
_HOSTNAME_MISMATCH = 62
_EXPIRED_OR_NOT_YET_VALID = frozenset({9, 10})


def describe_tls_failure(exc: BaseException, host: str) -> TLSError:
    """One readable ``TLSError`` for any certificate or handshake failure talking to ``host``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if exc.verify_code == _HOSTNAME_MISMATCH:
            return TLSError(f"{host}: certificate does not match the host name ({reason})")
        if exc.verify_code in _EXPIRED_OR_NOT_YET_VALID:
            return TLSError(f"{host}: certificate is outside its validity period ({reason})")
        return TLSError(f"{host}: certificate not trusted ({reason})")
    if isinstance(exc, ssl.CertificateError):
        return TLSError(f"{host}: certificate does not match the host name ({exc})")
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return TLSError(f"{host}: TLS negotiation failed ({reason})")


def tls_cause(exc: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The TLS failure behind ``exc`` (HTTP clients wrap it in their own errors), if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def https_client(ca_files: Sequence[Path] = (), *, timeout: float = 10.0) -> httpx.AsyncClient:
    """An HTTP client for our own outbound HTTPS (device pushes, the pre-send service).

    It verifies with :func:`client_context` (system store plus ``ca_files``, so
    ``MAILISH_TLS_CA_FILE`` counts here too), takes no proxy or CA settings from the
    environment, and follows no redirects: a redirect is an answer, never a second request
    to wherever the first server pointed.
    """
    return httpx.AsyncClient(
        verify=client_context(ca_files),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
    )
