"""The discovery sources, one function each, tried in order by ``discovering``.

Each source returns a ``Found`` or raises a ``MailishError`` whose message becomes the trail
entry explaining the miss. Sources the user's domain controls (its autoconfig hosts, SRV
records, guessed names) must name hosts that resolve to allowed addresses; the provider
table and the ISPDB are ours to trust, so their hosts are not re-checked here (the IMAP and
SMTP adapters check every host again when they connect).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

from mailish.domain import autoconfig_xml as xml
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import MailishError, PermanentError
from mailish.mail.autoconfig import probing, providers
from mailish.mail.autoconfig.fetching import Network, fetch
from mailish.mail.autoconfig.providers import ProviderQuirks

ISPDB_BASE = "https://autoconfig.thunderbird.net/v1.1/"


class Miss(PermanentError):
    """This source has nothing usable for the address; the message says why."""


@dataclass(frozen=True, slots=True)
class Found:
    imap: xml.ServerEntry
    smtp: xml.ServerEntry
    quirks: ProviderQuirks | None = None
    provider: str | None = None


def _from_provider(provider: providers.Provider, address: xml.Address) -> Found:
    user = xml.fill(provider.username, address)
    return Found(
        xml.ServerEntry(provider.imap, user), xml.ServerEntry(provider.smtp, user),
        provider.quirks, provider.name,
    )  # fmt: skip


def provider_table(address: xml.Address) -> Found:
    provider = providers.by_domain(address.domain)
    if provider is None:
        raise Miss(f"{address.domain} is not a built-in provider")
    return _from_provider(provider, address)


def _choose(config: xml.ClientConfig, *, allow_plaintext: bool) -> Found:
    imap = xml.pick(config.imap, allow_plaintext=allow_plaintext)
    smtp = xml.pick(config.smtp, allow_plaintext=allow_plaintext)
    if imap is None or smtp is None:
        missing = "IMAP" if imap is None else "SMTP"
        raise Miss(f"no {missing} server with TLS or STARTTLS in the document")
    return Found(imap, smtp)


async def _xml(url: str, address: xml.Address, net: Network, *, allow_plaintext: bool) -> Found:
    try:
        config = xml.parse_client_config(await fetch(url, net), address)
    except xml.AutoconfigXmlError as exc:
        raise Miss(f"{url}: {exc}") from exc
    return _choose(config, allow_plaintext=allow_plaintext)


async def ispdb(
    domain: str, address: xml.Address, net: Network, *, base: str, allow_plaintext: bool
) -> Found:
    return await _xml(base + domain, address, net, allow_plaintext=allow_plaintext)


async def _checked(found: Found, net: Network) -> Found:
    """Every host a domain-controlled source names must pass the SSRF guard."""
    for entry in (found.imap, found.smtp):
        await net.resolver.checked_address(entry.endpoint.host, allow_private=net.allow_private)
    return found


async def autoconfig_host(address: xml.Address, net: Network, *, allow_plaintext: bool) -> Found:
    query = urllib.parse.urlencode({"emailaddress": address.text})
    url = net.https_url(f"autoconfig.{address.domain}", f"/mail/config-v1.1.xml?{query}")
    return await _checked(await _xml(url, address, net, allow_plaintext=allow_plaintext), net)


async def well_known(address: xml.Address, net: Network, *, allow_plaintext: bool) -> Found:
    url = net.https_url(address.domain, "/.well-known/autoconfig/mail/config-v1.1.xml")
    return await _checked(await _xml(url, address, net, allow_plaintext=allow_plaintext), net)


async def _srv_pick(
    domain: str, services: tuple[tuple[str, Security], ...], net: Network
) -> Endpoint | None:
    for service, security in services:
        for target in await net.resolver.srv(f"{service}._tcp.{domain}"):
            return Endpoint(target.host, target.port, security)
    return None


async def srv(address: xml.Address, net: Network) -> Found:
    """RFC 6186 (and 8314 for ``_submissions``): implicit TLS services win over STARTTLS."""
    imap = await _srv_pick(
        address.domain, (("_imaps", Security.TLS), ("_imap", Security.STARTTLS)), net
    )
    smtp = await _srv_pick(
        address.domain, (("_submissions", Security.TLS), ("_submission", Security.STARTTLS)), net
    )
    if imap is None or smtp is None:
        raise Miss(f"no {'IMAP' if imap is None else 'submission'} SRV record")
    user = address.text
    return await _checked(Found(xml.ServerEntry(imap, user), xml.ServerEntry(smtp, user)), net)


async def mx(
    address: xml.Address, net: Network, *, base: str, allow_plaintext: bool
) -> tuple[Found, str]:
    """The MX host's registrable domain, looked up in the table, then the ISPDB.

    The MX host itself is never connected to, so its address is not checked; it is only a key.
    """
    hosts = await net.resolver.mx(address.domain)
    if not hosts:
        raise Miss(f"no MX record for {address.domain}")
    mx_domain = providers.registrable_domain(hosts[0])
    if mx_domain == address.domain:
        raise Miss(f"MX {hosts[0]} is in the address's own domain")
    provider = providers.by_mx_domain(mx_domain)
    if provider is not None:
        return _from_provider(provider, address), f"MX {hosts[0]} -> provider {provider.name}"
    try:
        found = await ispdb(mx_domain, address, net, base=base, allow_plaintext=allow_plaintext)
    except MailishError as exc:
        raise Miss(f"MX {hosts[0]} -> {mx_domain}: {exc}") from exc
    return found, f"MX {hosts[0]} -> ISPDB {mx_domain}"


_IMAP_GUESSES = ((993, Security.TLS), (143, Security.STARTTLS))
_SMTP_GUESSES = ((465, Security.TLS), (587, Security.STARTTLS))


async def _first_working(candidates: list[Endpoint], protocol: str, net: Network) -> Endpoint:
    """Probe all at once; the best-ranked candidate that answers wins (not the fastest)."""
    results = await asyncio.gather(
        *(probing.probe(c, protocol, net) for c in candidates), return_exceptions=True
    )
    for candidate, result in zip(candidates, results, strict=True):
        if result is None:
            return candidate
    reasons = "; ".join(f"{c}: {r}" for c, r in zip(candidates, results, strict=True))
    raise Miss(f"no guessed {protocol.upper()} server answered ({reasons})")


async def guesses(address: xml.Address, net: Network) -> Found:
    d = address.domain
    imap = [
        Endpoint(f"{prefix}.{d}", net.port(port), security)
        for port, security in _IMAP_GUESSES
        for prefix in ("imap", "mail")
    ]
    smtp = [
        Endpoint(f"{prefix}.{d}", net.port(port), security)
        for port, security in _SMTP_GUESSES
        for prefix in ("smtp", "mail")
    ]
    found_imap, found_smtp = await asyncio.gather(
        _first_working(imap, "imap", net), _first_working(smtp, "smtp", net),
        return_exceptions=True,
    )  # fmt: skip
    for result in (found_imap, found_smtp):
        if isinstance(result, BaseException):
            raise result
    assert isinstance(found_imap, Endpoint)
    assert isinstance(found_smtp, Endpoint)
    user = address.text
    return Found(xml.ServerEntry(found_imap, user), xml.ServerEntry(found_smtp, user))
