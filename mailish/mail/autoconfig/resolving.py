"""DNS for discovery: SRV, MX, and host addresses that pass the SSRF guard.

Every name discovery touches comes from the user (their domain, or records their domain
publishes), so every host is resolved here and each address is checked with
``mail.hosts.is_public`` before anything connects; the caller then connects to that checked
address, never to the name (a second resolution could answer differently: DNS rebinding).

All lookups, addresses included, go through one dnspython resolver. Why not getaddrinfo:
one path means the tests exercise exactly what production runs (they point ``nameservers``
at a local DNS server), and ``/etc/hosts`` entries of our own machine cannot be reached
through a user's domain. Without explicit nameservers the system's resolv.conf is used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailish.domain.errors import Unreachable
from mailish.mail.hosts import ForbiddenAddress, is_public


@dataclass(frozen=True, slots=True)
class SrvTarget:
    host: str
    port: int
    priority: int
    weight: int


class Resolver:
    """Async DNS with a per-query timeout; ``nameservers``/``port`` point tests at a local
    server."""

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        port: int = 53,
        timeout: float = 5.0,
        stand_ins: frozenset[str] = frozenset(),
    ) -> None:
        """``stand_ins`` (tests only): names whose loopback listeners stand in for public
        servers, so a test can show what happens *after* a public hop (a redirect or an
        XML document pointing inwards). Production never passes it."""
        self._stand_ins = stand_ins
        self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        self._resolver.lifetime = timeout

    async def _query(self, name: str, rdtype: str) -> list[object]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise Unreachable(f"DNS {rdtype} {name}: {type(exc).__name__}") from exc
        return list(answer)

    async def srv(self, name: str) -> list[SrvTarget]:
        """Targets by priority then weight (heaviest first); "." means "no service" (RFC 6186)."""
        targets = [
            SrvTarget(
                str(r.target).rstrip(".").lower(),  # type: ignore[attr-defined]
                int(r.port),  # type: ignore[attr-defined]
                int(r.priority),  # type: ignore[attr-defined]
                int(r.weight),  # type: ignore[attr-defined]
            )
            for r in await self._query(name, "SRV")
        ]
        return sorted(
            (t for t in targets if t.host and t.port), key=lambda t: (t.priority, -t.weight)
        )

    async def mx(self, domain: str) -> list[str]:
        records = await self._query(domain, "MX")
        ordered = sorted(records, key=lambda r: int(r.preference))  # type: ignore[attr-defined]
        hosts = [str(r.exchange).rstrip(".").lower() for r in ordered]  # type: ignore[attr-defined]
        return [h for h in hosts if h]

    async def checked_address(self, host: str, *, allow_private: bool) -> str:
        """The first address of ``host`` the policy allows (IPv4 first); raises otherwise.

        Raises ``Unreachable`` when the name has no address and ``ForbiddenAddress`` when
        every address is loopback/private/link-local/mapped or otherwise special.
        """
        addresses: list[str] = []
        try:  # an address already (an ISPDB or a server named by one): no DNS to ask
            addresses.append(str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))))
        except ValueError:
            for rdtype in ("A", "AAAA"):
                addresses += [str(r) for r in await self._query(host, rdtype)]
        if not addresses:
            raise Unreachable(f"cannot resolve {host!r}")
        refused: list[str] = []
        for text in addresses:
            if allow_private or host in self._stand_ins or is_public(ipaddress.ip_address(text)):
                return text
            refused.append(text)
        raise ForbiddenAddress(
            f"{host!r} resolves to non-public address(es) {', '.join(sorted(set(refused)))}; "
            "refused"
        )
