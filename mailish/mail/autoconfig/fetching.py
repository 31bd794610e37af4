"""HTTPS GETs of autoconfig documents, guarded against SSRF.

How the guard holds:

- Only ``https`` URLs are fetched; a redirect to anything else ends the fetch.
- The host is resolved and checked (``Resolver.checked_address``) and the request goes to
  *that address*: the URL carries the IP, TLS verifies the certificate for the host name
  (httpcore's ``sni_hostname`` extension sets SNI and the name checked), and the ``Host``
  header names the host. No second resolution can point us elsewhere.
- Redirects are followed by hand (at most ``MAX_REDIRECTS``), each hop resolved and checked
  again like the first.
- Every fetch gets a fresh client with no keep-alive: a pooled connection is keyed by IP and
  port, and reusing one verified for host A to talk to host B would skip B's certificate
  check.
- The body is read in chunks and abandoned past ``max_bytes``; the whole fetch, body
  included, runs under one deadline, so a slow-drip server cannot hold discovery.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mailish.domain.errors import PermanentError, TransientError
from mailish.mail.autoconfig.resolving import Resolver
from mailish.mail.tls import client_context, describe_tls_failure, tls_cause

MAX_BYTES = 1 << 20
MAX_REDIRECTS = 3


class FetchFailed(PermanentError):
    """The document could not be fetched (status, size, TLS, redirect policy)."""


@dataclass(frozen=True, slots=True)
class Network:
    """How discovery reaches the outside world. Defaults are production's.

    ``https_port`` and ``port_map`` exist so tests can serve ``autoconfig.<domain>`` and
    guessed IMAP/SMTP ports from unprivileged loopback ports.
    """

    resolver: Resolver
    ca_files: tuple[Path, ...] = ()
    allow_private: bool = False
    https_port: int = 443
    port_map: Mapping[int, int] = field(default_factory=dict)
    fetch_timeout: float = 10.0
    probe_timeout: float = 5.0
    max_bytes: int = MAX_BYTES

    def port(self, port: int) -> int:
        return self.port_map.get(port, port)

    def https_url(self, host: str, path: str) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{host}{port}{path}"


async def fetch(url: str, net: Network) -> bytes:
    """The body of a 200 answer to ``GET url``; raises ``FetchFailed``/``Unreachable``."""
    try:
        async with asyncio.timeout(net.fetch_timeout):
            return await _fetch(httpx.URL(url), net)
    except TimeoutError as exc:
        raise TransientError(f"{_origin(url)}: timed out", delay=30.0) from exc


def _origin(url: str | httpx.URL) -> str:
    parsed = httpx.URL(url) if isinstance(url, str) else url
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")


async def _fetch(url: httpx.URL, net: Network) -> bytes:
    context = client_context(net.ca_files)
    for _hop in range(MAX_REDIRECTS + 1):
        if url.scheme != "https":
            raise FetchFailed(f"refusing non-https URL {_origin(url)}")
        host = url.host
        address = await net.resolver.checked_address(host, allow_private=net.allow_private)
        port = url.port or 443
        host_header = host if port == 443 else f"{host}:{port}"
        location = await _get_once(url.copy_with(host=address, port=port), host, host_header,
                                   context, net)  # fmt: skip
        if isinstance(location, bytes):
            return location
        url = url.join(location)
    raise FetchFailed(f"{_origin(url)}: more than {MAX_REDIRECTS} redirects")


async def _get_once(
    target: httpx.URL, host: str, host_header: str, context: ssl.SSLContext, net: Network
) -> bytes | str:
    """One request to a checked address: the body, or a redirect's Location."""
    limits = httpx.Limits(max_keepalive_connections=0)
    headers = {"Host": host_header, "Accept": "application/xml, text/xml"}
    try:
        async with (
            httpx.AsyncClient(verify=context, trust_env=False, limits=limits) as client,
            client.stream(
                "GET", target, headers=headers, extensions={"sni_hostname": host}
            ) as response,
        ):
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed(f"https://{host_header}: redirect without Location")
                return str(location)
            if response.status_code != 200:
                raise FetchFailed(f"https://{host_header}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > net.max_bytes:
                    raise FetchFailed(f"https://{host_header}: answer over {net.max_bytes} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        cause = tls_cause(exc)
        if cause is not None:
            failure = describe_tls_failure(cause, host)
            raise FetchFailed(f"https://{host_header}: TLS failed ({failure})") from exc
        raise FetchFailed(f"https://{host_header}: {type(exc).__name__} {exc}") from exc
