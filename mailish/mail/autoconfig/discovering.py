"""Autoconfig discovery: from an e-mail address to IMAP and SMTP settings, with reasons.

Sources are tried in a fixed order and the first that yields both an IMAP and an SMTP server
wins; every earlier miss is kept in ``trail`` so a user (or support) can see why::

    provider -> ispdb -> autoconfig -> well-known -> srv -> mx -> guess

Only HTTPS is fetched, XML is parsed without DTDs, implicit TLS beats STARTTLS and
plaintext is refused unless the policy allows it, and every host a user's domain names is
resolved and checked before we connect (see ``resolving`` and ``fetching``).

Results are cached per domain in-process for ``DiscoveryCache.ttl`` seconds (keyed with the
policy flags that change the answer); failures are not cached, so a fixed DNS record counts
at once. The cache is not shared between processes and needs no lock: one event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailish.domain import autoconfig_xml as xml
from mailish.domain.endpoints import Endpoint
from mailish.domain.errors import MailishError, PermanentError
from mailish.mail.autoconfig import sources
from mailish.mail.autoconfig.fetching import Network
from mailish.mail.autoconfig.providers import ProviderQuirks
from mailish.mail.autoconfig.resolving import Resolver
from mailish.mail.policy import ConnectionPolicy

log = logging.getLogger(__name__)

ISPDB_BASE = sources.ISPDB_BASE
DEFAULT_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Discovered:
    imap: Endpoint
    smtp: Endpoint
    source: str  # provider | ispdb | autoconfig | well-known | srv | mx | guess
    quirks: ProviderQuirks | None
    trail: tuple[str, ...]
    username: str  # the login name the source asks for (placeholders filled)
    smtp_username: str
    provider: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "imap": self.imap.as_json(), "smtp": self.smtp.as_json(),
            "username": self.username, "smtp_username": self.smtp_username,
            "source": self.source, "provider": self.provider,
            "quirks": dataclasses.asdict(self.quirks) if self.quirks else None,
            "trail": list(self.trail),
        }  # fmt: skip


class DiscoveryFailed(PermanentError):
    """No source had usable settings; ``trail`` says what each one said."""

    def __init__(self, address: str, trail: tuple[str, ...]) -> None:
        super().__init__(f"no mail settings found for {address}: " + "; ".join(trail))
        self.trail = trail


@dataclass(slots=True)
class _Entry:
    expires: float
    address: xml.Address
    found: sources.Found
    source: str
    trail: tuple[str, ...]


class DiscoveryCache:
    def __init__(
        self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, bool, bool], _Entry] = {}

    def get(self, key: tuple[str, bool, bool]) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self._clock():
            del self._entries[key]
            return None
        return entry

    def put(self, key: tuple[str, bool, bool], entry: _Entry) -> None:
        entry.expires = self._clock() + self.ttl
        self._entries[key] = entry


def _rebind(entry: xml.ServerEntry, old: xml.Address, new: xml.Address) -> xml.ServerEntry:
    """A cached login name, re-filled for another address of the same domain."""
    if entry.username == old.text:
        return dataclasses.replace(entry, username=new.text)
    if entry.username == old.local:
        return dataclasses.replace(entry, username=new.local)
    return entry


async def discover(
    address: str,
    *,
    policy: ConnectionPolicy,
    resolver: Resolver | None = None,
    ispdb_base: str = ISPDB_BASE,
    cache: DiscoveryCache | None = None,
    net: Network | None = None,
) -> Discovered:
    """Settings for ``address``; raises ``ValueError`` for a malformed address and
    ``DiscoveryFailed`` when every source misses.

    ``net`` overrides how the network is reached (tests: ports); when given, its resolver,
    CA files and private-host allowance are used as they are.
    """
    parsed = xml.split_address(address)
    if net is None:
        net = Network(
            resolver=resolver or Resolver(), ca_files=policy.ca_files,
            allow_private=policy.allow_private_hosts,
        )  # fmt: skip
    key = (parsed.domain, policy.allow_plaintext, net.allow_private)
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        found = sources.Found(
            _rebind(cached.found.imap, cached.address, parsed),
            _rebind(cached.found.smtp, cached.address, parsed),
            cached.found.quirks, cached.found.provider,
        )  # fmt: skip
        return _result(found, cached.source, (*cached.trail, "cache: hit"))
    found, source, trail = await _run_sources(parsed, policy, net, ispdb_base)
    if cache is not None:
        cache.put(key, _Entry(0.0, parsed, found, source, trail))
    return _result(found, source, trail)


def _result(found: sources.Found, source: str, trail: tuple[str, ...]) -> Discovered:
    return Discovered(
        found.imap.endpoint, found.smtp.endpoint, source, found.quirks, trail,
        found.imap.username, found.smtp.username, found.provider,
    )  # fmt: skip


async def _run_sources(
    address: xml.Address, policy: ConnectionPolicy, net: Network, ispdb_base: str
) -> tuple[sources.Found, str, tuple[str, ...]]:
    plain = policy.allow_plaintext
    trail: list[str] = []
    steps: list[tuple[str, Callable[[], Awaitable[sources.Found | tuple[sources.Found, str]]]]] = [
        ("ispdb", lambda: sources.ispdb(address.domain, address, net, base=ispdb_base,
                                        allow_plaintext=plain)),
        ("autoconfig", lambda: sources.autoconfig_host(address, net, allow_plaintext=plain)),
        ("well-known", lambda: sources.well_known(address, net, allow_plaintext=plain)),
        ("srv", lambda: sources.srv(address, net)),
        ("mx", lambda: sources.mx(address, net, base=ispdb_base, allow_plaintext=plain)),
        ("guess", lambda: sources.guesses(address, net)),
    ]  # fmt: skip
    try:
        return sources.provider_table(address), "provider", ()
    except sources.Miss as exc:
        trail.append(f"provider: {exc}")
    for name, step in steps:
        try:
            outcome = await step()
        except MailishError as exc:
            trail.append(f"{name}: {exc}")
            log.debug("autoconfig %s missed for %s: %s", name, address.domain, exc)
            continue
        if isinstance(outcome, tuple):  # the MX step also says which way it went
            found, how = outcome
            trail.append(f"mx: {how}")
            return found, name, tuple(trail)
        return outcome, name, tuple(trail)
    raise DiscoveryFailed(address.text, tuple(trail))
