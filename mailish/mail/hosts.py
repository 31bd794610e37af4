"""Where a user-supplied mail host really points, checked before we connect.

Users type host names; a host that resolves to loopback, a private network, link-local or
another special range would let them aim our workers at our own infrastructure (SSRF).
Unless the dev-only allowance is on, such addresses are refused, and the caller connects to
the address that was checked (not a second resolution that could differ).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from mailish.domain.errors import PermanentError, Unreachable


class ForbiddenAddress(PermanentError):
    pass


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
        if address.teredo is not None:
            return False
    return address.is_global and not address.is_multicast


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> str:
    """The first address of ``host`` that policy allows; raises if none is."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve {host!r} ({exc.strerror})") from exc
    refused: list[str] = []
    for _family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if allow_private or is_public(address):
            return str(address)
        refused.append(str(address))
    raise ForbiddenAddress(
        f"{host!r} resolves to non-public address(es) {', '.join(sorted(set(refused)))}; "
        "refused (dev only: MAILISH_ALLOW_PRIVATE_HOSTS=1)"
    )
