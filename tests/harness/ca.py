"""One throwaway certificate authority for every test server.

Dovecot and the SMTP test server both get a certificate from this CA, so a single
``MAILISH_TLS_CA_FILE`` (``ca.pem``) makes the code under test trust both, exactly as it would
trust a private CA in production, and no test has to switch certificate checks off.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class LocalCA:
    """Paths of a CA written by :func:`make_ca`; every file is PEM."""

    folder: Path
    ca_file: Path  # ca.pem: the CA certificate, i.e. what MAILISH_TLS_CA_FILE points at
    cert_file: Path  # server.pem: server certificate followed by its chain
    key_file: Path  # server.key: the server certificate's private key

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks host names)."""
        return client_ssl_context(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the ``localhost``/``127.0.0.1`` certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_ca(folder: Path, names: tuple[str, ...] = SERVER_NAMES) -> LocalCA:
    """Create a fresh CA plus a server certificate for ``names`` and write them into ``folder``.

    trustme does this in milliseconds, unlike ``openssl req``; the files are written (not kept
    in memory) because Dovecot and the code under test read them by path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mailish test CA")
    server = ca.issue_cert(*names)
    result = LocalCA(
        folder=folder,
        ca_file=folder / "ca.pem",
        cert_file=folder / "server.pem",
        key_file=folder / "server.key",
    )
    ca.cert_pem.write_to_path(str(result.ca_file))
    result.cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(result.key_file))
    # Dovecot reads the key as root at config time; no one else needs it.
    result.key_file.chmod(0o600)
    for public in (result.ca_file, result.cert_file):
        public.chmod(0o644)
    return result


def client_ssl_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client ``SSLContext`` that trusts only ``ca_file`` (no system CAs), hostname checks on."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
