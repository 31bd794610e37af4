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


def describe_tls_failure(exc: BaseException, host: str) -> TLSError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        return TLSError(f"{host}: certificate not trusted ({reason})")
    if isinstance(exc, ssl.CertificateError):
        return TLSError(f"{host}: certificate does not match the host name ({exc})")
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return TLSError(f"{host}: TLS negotiation failed ({reason})")
