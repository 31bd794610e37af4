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


# IPv6 ranges that carry an IPv4 address in their low 32 bits and can deliver to it: the
# deprecated IPv4-compatible form (::a.b.c.d), SIIT's IPv4-translated form
# (::ffff:0:a.b.c.d) and the NAT64 well-known prefix (64:ff9b::a.b.c.d, RFC 6052), which a
# NAT64 gateway turns into a connection to a.b.c.d — possibly inside our network.
_EMBEDS_IPV4 = tuple(
    ipaddress.IPv6Network(net) for net in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# Local-use NAT64 (RFC 8215): translated by our own network, never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when ``address`` is globally routable unicast, judging embedded IPv4 by itself."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
        if address.teredo is not None:
            return False
        bare = ipaddress.IPv6Address(int(address))  # without a %scope, for the range tests
        if bare in _LOCAL_NAT64:
            return False
        if any(bare in net for net in _EMBEDS_IPV4):
            return is_public(ipaddress.IPv4Address(int(bare) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, in any form the C resolver accepts, or None for a name.

    ``getaddrinfo`` reads ``127.1``, ``2130706433``, ``0x7f000001`` and ``0177.0.0.1`` as
    127.0.0.1 (inet_aton's forms), which ``ipaddress`` rejects; a check that only knows
    dotted quads would wave them through as names.
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


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
