"""Checking a guessed IMAP/SMTP endpoint by talking to it briefly.

A guess counts only when the server proves it can be used safely: with implicit TLS the
handshake verifies the certificate for the guessed name and the server greets; with
STARTTLS the server greets and advertises STARTTLS (IMAP CAPABILITY / SMTP EHLO). Nothing is
sent before that but a capability query, never a credential. The connection goes to the
checked address (see ``resolving``) and everything runs under ``net.probe_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import PermanentError, Unreachable
from mailish.mail.autoconfig.fetching import Network
from mailish.mail.tls import client_context

MAX_LINE = 8192
MAX_LINES = 100


class ProbeFailed(PermanentError):
    pass


async def probe(endpoint: Endpoint, protocol: str, net: Network) -> None:
    """Return when ``endpoint`` speaks ``protocol`` ("imap"/"smtp") securely; raise otherwise."""
    address = await net.resolver.checked_address(endpoint.host, allow_private=net.allow_private)
    tls = endpoint.security is Security.TLS
    context = client_context(net.ca_files)
    try:
        async with asyncio.timeout(net.probe_timeout):
            reader, writer = await asyncio.open_connection(
                address, endpoint.port, ssl=context if tls else None,
                server_hostname=endpoint.host if tls else None, limit=MAX_LINE,
            )  # fmt: skip
            try:
                if protocol == "imap":
                    await _imap(reader, writer, starttls=not tls)
                else:
                    await _smtp(reader, writer, starttls=not tls)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise ProbeFailed(f"{endpoint}: TLS failed ({exc})") from exc
    except TimeoutError as exc:
        raise Unreachable(f"{endpoint}: timed out") from exc
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        raise Unreachable(f"{endpoint}: {type(exc).__name__} {exc}") from exc


async def _line(reader: asyncio.StreamReader) -> str:
    raw = await reader.readuntil(b"\n")
    return raw.decode("utf-8", "replace").rstrip("\r\n")


async def _imap(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, starttls: bool
) -> None:
    greeting = await _line(reader)
    if not greeting.upper().startswith(("* OK", "* PREAUTH")):
        raise ProbeFailed(f"not an IMAP greeting: {greeting[:80]!r}")
    if not starttls:
        return
    if greeting.upper().startswith("* PREAUTH"):
        raise ProbeFailed("IMAP server greets PREAUTH; STARTTLS impossible")
    writer.write(b"p1 CAPABILITY\r\n")
    await writer.drain()
    caps: set[str] = set()
    for _ in range(MAX_LINES):
        line = await _line(reader)
        if line.upper().startswith("* CAPABILITY "):
            caps.update(line.upper().split()[2:])
        elif line.startswith("p1 "):
            break
    if "STARTTLS" not in caps:
        raise ProbeFailed("IMAP server does not offer STARTTLS")
    writer.write(b"p2 LOGOUT\r\n")


async def _smtp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, starttls: bool
) -> None:
    reply = await _reply(reader)
    if not reply or not reply[0].startswith("220"):
        raise ProbeFailed(f"not an SMTP greeting: {reply[:1]!r}")
    if starttls:
        writer.write(b"EHLO mailish.invalid\r\n")
        await writer.drain()
        reply = await _reply(reader)
        if not any(line[4:].upper().startswith("STARTTLS") for line in reply):
            raise ProbeFailed("SMTP server does not offer STARTTLS")
    writer.write(b"QUIT\r\n")


async def _reply(reader: asyncio.StreamReader) -> list[str]:
    """One (possibly multi-line) SMTP reply: ``250-a``, ``250-b``, ``250 c``."""
    lines: list[str] = []
    for _ in range(MAX_LINES):
        line = await _line(reader)
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return lines
    raise ProbeFailed("SMTP reply too long")
