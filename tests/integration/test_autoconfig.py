"""Autoconfig discovery against real local servers: DNS (dnslib), HTTPS, IMAP/SMTP greeters.

How real names reach loopback: the discovery's resolver is pointed at a local DNS server
whose A records map test names (``autoconfig.host.test``, ``ispdb.local.test``...) to
127.0.0.1, and ``Network.https_port`` / ``port_map`` move 443/993/... to the listeners'
free ports. Positive tests allow private hosts (every listener is on loopback); SSRF tests
do not, and assert that canary listeners see zero connections. A test CA issues one
certificate for every test name, trusted through ``ca_files`` like a private CA.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailish.domain.endpoints import Endpoint, Security
from mailish.mail.autoconfig.discovering import (
    Discovered,
    DiscoveryCache,
    DiscoveryFailed,
    discover,
)
from mailish.mail.autoconfig.fetching import Network
from mailish.mail.autoconfig.resolving import Resolver
from mailish.mail.policy import ConnectionPolicy
from tests.harness.ca import LocalCA, make_ca
from tests.harness.dns_server import LocalDns
from tests.harness.https_server import Answer, Canary, Greeter, HttpsServer

DOMAINS = ("local.test", "isp.test", "host.test", "wk.test", "srv.test", "mxi.test",
           "hoster.test", "guess.test", "evil.test", "redir.test", "bad.test",
           "cache.test")  # fmt: skip
NAMES = ("localhost", "127.0.0.1", *DOMAINS, *(f"*.{d}" for d in DOMAINS))


def config_xml(imap: str, smtp: str, *, imap_type: str = "SSL", imap_port: int = 993) -> bytes:
    return f"""<?xml version="1.0"?><clientConfig version="1.1"><emailProvider id="x">
<incomingServer type="imap"><hostname>{imap}</hostname><port>{imap_port}</port>
<socketType>{imap_type}</socketType><username>%EMAILLOCALPART%</username></incomingServer>
<outgoingServer type="smtp"><hostname>{smtp}</hostname><port>587</port>
<socketType>STARTTLS</socketType><username>%EMAILADDRESS%</username></outgoingServer>
</emailProvider></clientConfig>""".encode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_ca(tmp_path_factory.mktemp("autoconfig-ca"), names=NAMES)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[LocalDns]:
    server = LocalDns()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def https(ca: LocalCA) -> Iterator[HttpsServer]:
    server = HttpsServer(ca.server_context())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    yield listener
    listener.close()


@pytest.fixture(autouse=True)
def fresh(dns_server: LocalDns, https: HttpsServer) -> Iterator[None]:
    dns_server.clear()
    https.clear()
    dns_server.add("ispdb.local.test. 60 IN A 127.0.0.1")
    yield
    dns_server.clear()  # later modules may reuse names; leave nothing behind


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Env:
    def __init__(self, ca: LocalCA, dns_server: LocalDns, https: HttpsServer) -> None:
        self.ca_files: tuple[Path, ...] = (ca.ca_file,)
        self.dns, self.https = dns_server, https
        self.ispdb = f"https://ispdb.local.test:{https.port}/v1.1/"

    def net(self, *, allow_private: bool = True, https_port: int | None = None,
            port_map: dict[int, int] | None = None, stand_ins: frozenset[str] = frozenset(),
            fetch_timeout: float = 2.0) -> Network:  # fmt: skip
        resolver = Resolver(["127.0.0.1"], port=self.dns.port, timeout=2, stand_ins=stand_ins)
        closed = closed_port()
        ports = {993: closed, 143: closed, 465: closed, 587: closed, **(port_map or {})}
        return Network(
            resolver, ca_files=self.ca_files, allow_private=allow_private,
            https_port=https_port or self.https.port, port_map=ports,
            fetch_timeout=fetch_timeout, probe_timeout=1.0,
        )  # fmt: skip

    async def discover(self, address: str, *, plaintext: bool = False, **net: Any) -> Discovered:
        policy = ConnectionPolicy(self.ca_files, allow_plaintext=plaintext)
        return await discover(
            address, policy=policy, net=self.net(**net),
            ispdb_base=self.ispdb,
        )  # fmt: skip


@pytest.fixture
def env(ca: LocalCA, dns_server: LocalDns, https: HttpsServer) -> Env:
    return Env(ca, dns_server, https)


# -- each source, in order ---------------------------------------------------------------


async def test_provider_table_needs_no_network(env: Env) -> None:
    found = await env.discover("someone@googlemail.com")
    assert found.source == "provider" and found.provider == "gmail"
    assert found.quirks.oauth_provider == "google"
    assert env.dns.queries == [] and env.https.requests == []


async def test_ispdb_hit(env: Env) -> None:
    env.https.route(
        "ispdb.local.test",
        "/v1.1/isp.test",
        Answer(body=config_xml("imap.isp.test", "smtp.isp.test")),
    )
    found = await env.discover("ann@isp.test")
    assert found.source == "ispdb"
    assert found.imap == Endpoint("imap.isp.test", 993, Security.TLS)
    assert found.username == "ann" and found.smtp_username == "ann@isp.test"
    assert found.trail == ("provider: isp.test is not a built-in provider",)


async def test_autoconfig_host_after_ispdb_miss(env: Env) -> None:
    env.dns.add("autoconfig.host.test. 60 IN A 127.0.0.1", "mail.host.test. 60 IN A 127.0.0.1")
    env.https.route(
        "autoconfig.host.test",
        "/mail/config-v1.1.xml",
        Answer(body=config_xml("mail.host.test", "mail.host.test")),
    )
    found = await env.discover("bob@host.test")
    assert found.source == "autoconfig"
    assert "ispdb:" in found.trail[1] and "HTTP 404" in found.trail[1]
    assert (
        "autoconfig.host.test",
        "/mail/config-v1.1.xml",
        "emailaddress=bob%40host.test",
    ) in env.https.requests


async def test_well_known_after_three_misses(env: Env) -> None:
    env.dns.add(
        "wk.test. 60 IN A 127.0.0.1",
        "imap.wk.test. 60 IN A 127.0.0.1",
        "smtp.wk.test. 60 IN A 127.0.0.1",
    )
    env.https.route(
        "wk.test",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        Answer(body=config_xml("imap.wk.test", "smtp.wk.test")),
    )
    found = await env.discover("c@wk.test")
    assert found.source == "well-known"
    assert [t.split(":")[0] for t in found.trail] == ["provider", "ispdb", "autoconfig"]
    assert "cannot resolve 'autoconfig.wk.test'" in found.trail[2]


async def test_srv_prefers_implicit_tls(env: Env) -> None:
    env.dns.add(
        "_imap._tcp.srv.test. 60 IN SRV 0 1 143 mail.srv.test.",
        "_imaps._tcp.srv.test. 60 IN SRV 0 1 993 mail.srv.test.",
        "_submission._tcp.srv.test. 60 IN SRV 0 1 587 mail.srv.test.",
        "mail.srv.test. 60 IN A 127.0.0.1",
    )
    found = await env.discover("d@srv.test")
    assert found.source == "srv"
    assert found.imap == Endpoint("mail.srv.test", 993, Security.TLS)
    assert found.smtp == Endpoint("mail.srv.test", 587, Security.STARTTLS)
    assert len(found.trail) == 4


async def test_mx_to_provider_and_to_ispdb(env: Env) -> None:
    env.dns.add(
        "mxi.test. 60 IN MX 10 aspmx.l.google.com.",
        "hoster.test. 60 IN MX 10 mx1.mail.hoster.test.",
    )
    found = await env.discover("e@mxi.test")
    assert found.source == "mx" and found.provider == "gmail"
    assert found.trail[-1] == "mx: MX aspmx.l.google.com -> provider gmail"
    env.dns.add("cache.test. 60 IN MX 10 mx.hoster.test.")
    env.https.route(
        "ispdb.local.test",
        "/v1.1/hoster.test",
        Answer(body=config_xml("imap.hoster.test", "smtp.hoster.test")),
    )
    found = await env.discover("f@cache.test")
    assert found.source == "mx" and found.imap.host == "imap.hoster.test"
    assert found.trail[-1] == "mx: MX mx.hoster.test -> ISPDB hoster.test"


async def test_guesses_are_probed(env: Env, ca: LocalCA) -> None:
    imaps, submission = Greeter("imap", ca.server_context()), Greeter("smtp")
    try:
        env.dns.add("imap.guess.test. 60 IN A 127.0.0.1", "smtp.guess.test. 60 IN A 127.0.0.1")
        found = await env.discover("g@guess.test", port_map={993: imaps.port, 587: submission.port})
    finally:
        imaps.stop()
        submission.stop()
    assert found.source == "guess"
    assert found.imap == Endpoint("imap.guess.test", imaps.port, Security.TLS)
    assert found.smtp == Endpoint("smtp.guess.test", submission.port, Security.STARTTLS)


async def test_nothing_found_explains_every_step(env: Env) -> None:
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover("h@bad.test")
    steps = [t.split(":")[0] for t in failed.value.trail]
    assert steps == ["provider", "ispdb", "autoconfig", "well-known", "srv", "mx", "guess"]


# -- hostile documents ---------------------------------------------------------------------


XXE = b"""<?xml version="1.0"?><!DOCTYPE c [<!ENTITY s SYSTEM "file:///etc/passwd">]>
<clientConfig><emailProvider><incomingServer type="imap"><hostname>&s;</hostname>
<port>993</port><socketType>SSL</socketType></incomingServer></emailProvider></clientConfig>"""
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + b"".join(
        f'<!ENTITY a{i} "{("&a" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b"]><clientConfig>&a9;</clientConfig>"
)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"<clientConfig><emailProvider>", "unreadable XML"), (XXE, "DTDForbidden"),
     (LAUGHS, "DTDForbidden"),
     (config_xml("p.host.test", "p.host.test", imap_type="plain", imap_port=143),
      "no IMAP server with TLS")],
    ids=["malformed", "xxe", "billion-laughs", "plaintext-only"],
)  # fmt: skip
async def test_bad_ispdb_documents_fall_through(env: Env, body: bytes, reason: str) -> None:
    env.https.route("ispdb.local.test", "/v1.1/host.test", Answer(body=body))
    env.dns.add("autoconfig.host.test. 60 IN A 127.0.0.1", "mail.host.test. 60 IN A 127.0.0.1")
    env.https.route(
        "autoconfig.host.test",
        "/mail/config-v1.1.xml",
        Answer(body=config_xml("mail.host.test", "mail.host.test")),
    )
    started = time.monotonic()
    found = await env.discover("x@host.test")
    assert time.monotonic() - started < 2
    assert found.source == "autoconfig" and reason in found.trail[1]
    assert "root:" not in repr(found)


async def test_plaintext_only_when_allowed(env: Env) -> None:
    env.https.route(
        "ispdb.local.test",
        "/v1.1/host.test",
        Answer(body=config_xml("p.host.test", "p.host.test", imap_type="plain", imap_port=143)),
    )
    found = await env.discover("x@host.test", plaintext=True)
    assert found.imap == Endpoint("p.host.test", 143, Security.PLAIN)


async def test_oversized_and_slow_answers_are_cut_off(env: Env) -> None:
    env.https.route("ispdb.local.test", "/v1.1/host.test", Answer(body=b"<" * (2 << 20)))
    env.dns.add("autoconfig.host.test. 60 IN A 127.0.0.1")
    env.https.route(
        "autoconfig.host.test", "/mail/config-v1.1.xml", Answer(body=b"x" * 100, drip=True)
    )
    started = time.monotonic()
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover("x@host.test", fetch_timeout=0.5)
    assert time.monotonic() - started < 5
    assert "answer over" in failed.value.trail[1] and "timed out" in failed.value.trail[2]


# -- SSRF ----------------------------------------------------------------------------------


async def test_user_domains_cannot_reach_loopback(env: Env, canary: Canary) -> None:
    env.dns.add(
        "evil.test. 60 IN A 127.0.0.1", "autoconfig.evil.test. 60 IN A 127.0.0.1",
        f"_imaps._tcp.evil.test. 60 IN SRV 0 1 {canary.port} in.evil.test.",
        f"_submissions._tcp.evil.test. 60 IN SRV 0 1 {canary.port} in.evil.test.",
        "in.evil.test. 60 IN A 10.0.0.1", "evil.test. 60 IN MX 10 mx.evil.test.",
        "imap.evil.test. 60 IN AAAA ::ffff:7f00:1", "mail.evil.test. 60 IN A 169.254.169.254",
        "smtp.evil.test. 60 IN A 127.0.0.1",
    )  # fmt: skip
    ports = dict.fromkeys((993, 143, 465, 587), canary.port)
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover(
            "v@evil.test", allow_private=False, https_port=canary.port, port_map=ports
        )
    assert canary.connections == 0
    trail = " ".join(failed.value.trail)
    for address in ("127.0.0.1", "10.0.0.1", "::ffff:127.0.0.1", "169.254.169.254"):
        assert f"non-public address(es) {address}" in trail


async def test_redirects_are_rechecked(env: Env, canary: Canary) -> None:
    env.dns.add("autoconfig.redir.test. 60 IN A 127.0.0.1", "inside.redir.test. 60 IN A 127.0.0.1",
                "redir.test. 60 IN A 127.0.0.1")  # fmt: skip
    inside = f"https://inside.redir.test:{canary.port}/x"
    env.https.route(
        "autoconfig.redir.test", "/mail/config-v1.1.xml", Answer(302, headers={"Location": inside})
    )
    plain = Answer(301, headers={"Location": f"http://127.0.0.1:{canary.port}/"})
    env.https.route("redir.test", "/.well-known/autoconfig/mail/config-v1.1.xml", plain)
    # The first hop stands in for a public server; the redirect target must still be checked.
    stand_ins = frozenset({"autoconfig.redir.test", "redir.test", "ispdb.local.test"})
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover("r@redir.test", allow_private=False, stand_ins=stand_ins)
    assert canary.connections == 0
    assert "'inside.redir.test' resolves to non-public" in failed.value.trail[2]
    assert "refusing non-https URL" in failed.value.trail[3]


async def test_redirect_to_https_is_followed(env: Env) -> None:
    env.dns.add("autoconfig.redir.test. 60 IN A 127.0.0.1", "mail.redir.test. 60 IN A 127.0.0.1")
    target = f"https://redir.test:{env.https.port}/real.xml"
    env.dns.add("redir.test. 60 IN A 127.0.0.1")
    env.https.route(
        "autoconfig.redir.test", "/mail/config-v1.1.xml", Answer(302, headers={"Location": target})
    )
    env.https.route(
        "redir.test", "/real.xml", Answer(body=config_xml("mail.redir.test", "mail.redir.test"))
    )
    found = await env.discover("r@redir.test")
    assert found.source == "autoconfig" and found.imap.host == "mail.redir.test"


async def test_documents_cannot_point_inside(env: Env) -> None:
    env.dns.add("autoconfig.redir.test. 60 IN A 127.0.0.1", "db.redir.test. 60 IN A 10.1.2.3")
    env.https.route(
        "autoconfig.redir.test",
        "/mail/config-v1.1.xml",
        Answer(body=config_xml("db.redir.test", "db.redir.test")),
    )
    stand_ins = frozenset({"autoconfig.redir.test"})
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover("r@redir.test", allow_private=False, stand_ins=stand_ins)
    assert "'db.redir.test' resolves to non-public address(es) 10.1.2.3" in failed.value.trail[2]


# -- cache ---------------------------------------------------------------------------------


async def test_cache_per_domain_rebinds_the_login(env: Env) -> None:
    env.https.route(
        "ispdb.local.test",
        "/v1.1/cache.test",
        Answer(body=config_xml("imap.cache.test", "smtp.cache.test")),
    )
    clock = [0.0]
    cache = DiscoveryCache(ttl=60, clock=lambda: clock[0])
    policy = ConnectionPolicy(env.ca_files)
    first = await discover(
        "a@cache.test", policy=policy, net=env.net(), ispdb_base=env.ispdb, cache=cache
    )
    second = await discover(
        "b@cache.test", policy=policy, net=env.net(), ispdb_base=env.ispdb, cache=cache
    )
    assert len(env.https.requests) == 1
    assert second.trail[-1] == "cache: hit" and second.username == "b" and first.username == "a"
    clock[0] = 61.0
    await discover("c@cache.test", policy=policy, net=env.net(), ispdb_base=env.ispdb, cache=cache)
    assert len(env.https.requests) == 2


async def test_certificate_is_checked_for_the_host_name_not_the_address(env: Env) -> None:
    # nocert.example is not on the test certificate: connecting to the checked 127.0.0.1
    # must still verify the name, so the fetch fails although the address is in the cert.
    env.dns.add("autoconfig.nocert.example. 60 IN A 127.0.0.1")
    env.https.route("autoconfig.nocert.example", "/mail/config-v1.1.xml",
                    Answer(body=config_xml("a.nocert.example", "a.nocert.example")))  # fmt: skip
    with pytest.raises(DiscoveryFailed) as failed:
        await env.discover("n@nocert.example")
    assert "TLS failed" in failed.value.trail[2] and "match" in failed.value.trail[2]
    assert all(host != "autoconfig.nocert.example" for host, _, _ in env.https.requests)
