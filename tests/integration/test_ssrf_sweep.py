"""SSRF sweep: every place a user hands us a host, a domain or a URL, with every spelling of
an inside address we know, against the real API with ``allow_private_hosts`` off.

Where users supply hosts (from the OpenAPI): ``POST /v1/accounts`` (explicit IMAP/SMTP hosts,
or just an address whose domain discovery follows), ``PUT /v1/account/credentials`` (which
logs in to the stored hosts again) and ``POST /v1/push/subscriptions`` (a URL the worker will
POST to). Each must answer a clear 4xx, and canary listeners on loopback — on the ports each
path would use — must see no connection at all.

How DNS reaches our test names: discovery resolves through dnspython configured from the
system's resolv.conf. The ``local_dns`` fixture makes that configuration point at a local DNS
server (the machine's resolver, as far as the API process can tell), so a user's domain can
publish A/AAAA/SRV/MX records aimed inside. The API itself is not patched.

The paths where the user's host must *succeed* (linking a real Dovecot) cannot run here:
with private hosts refused, our loopback Dovecot is off limits too. Those are covered by the
API tests with the dev allowance on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import selectors
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from uuid import UUID, uuid4

import dns.resolver
import httpx
import pytest

from mailish.domain import composing
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import TransientError
from mailish.domain.ids import AccountId, BucketNo
from mailish.domain.logins import PasswordLogin
from mailish.mail import smtp
from mailish.mail.credentials import KeyRing
from mailish.mail.hosts import ForbiddenAddress
from mailish.mail.oauth.broker import OAuthRejected, TokenBroker
from mailish.mail.oauth.providers import Provider, ProviderRegistry
from mailish.mail.policy import ConnectionPolicy
from mailish.mail.tls import https_client
from mailish.services import presend
from mailish.services.linking import LinkError, LinkRequest, verify_smtp
from mailish.store import accounts, push_subscriptions, tokens
from mailish.store.connecting import Pool
from mailish.worker.pushing import Outcome, Pusher, PushTuning
from tests.harness.ca import LocalCA
from tests.harness.dns_server import LocalDns
from tests.integration.conftest import RunningApi, serve

#: Host spellings that all lead inside. The loopback ones reach the canaries.
INSIDE_HOSTS = (
    "localhost", "127.0.0.1", "127.1", "0x7f.1", "2130706433", "0x7f000001", "0177.0.0.1",
    "017700000001", "0.0.0.0", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::127.0.0.1",
    "64:ff9b::127.0.0.1", "10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.0.1",
    "169.254.169.254", "100.64.0.1", "fd00::1", "fe80::1",
)  # fmt: skip
#: IPv6 literals as URLs and mail clients write them; the API takes them without brackets.
BRACKETED_HOSTS = ("[::1]", "[::ffff:127.0.0.1]", "[fd00::1]", "[fe80::1]")
NO_HOSTS = (
    "imap example.com", "imap.example.com/x", "user@imap.example.com", "[not-v6]",
    "-imap.example.com", "imap..example.com", "ex\u00e4mple..com",
)  # fmt: skip
#: Push endpoint URLs that lead inside (``{port}`` is a canary's).
INSIDE_URLS = (
    "https://localhost:{port}/p", "https://localhost.:{port}/p", "https://127.0.0.1:{port}/p",
    "https://127.1:{port}/p", "https://2130706433:{port}/p", "https://0x7f000001:{port}/p",
    "https://0177.0.0.1:{port}/p", "https://017700000001:{port}/p", "https://0.0.0.0:{port}/p",
    "https://[::1]:{port}/p", "https://[::ffff:127.0.0.1]:{port}/p",
    "https://[::ffff:7f00:1]:{port}/p", "https://[64:ff9b::7f00:1]:{port}/p",
    "https://10.0.0.1/p", "https://172.16.0.1/p", "https://192.168.1.1/p",
    "https://169.254.169.254/latest/meta-data/", "https://[fd00::1]/p", "https://[fe80::1]/p",
    "http://push.example.com/p", "https://user:pw@push.example.com/p",
)  # fmt: skip
DISCOVERY_PORTS = (443, 993, 143, 465, 587, 25, 80)


class Canaries:
    """Bare TCP listeners that count connections (each is accepted and closed at once)."""

    def __init__(self) -> None:
        self.connections: list[tuple[str, int]] = []
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def listen(self, host: str, port: int = 0) -> int | None:
        """The port listened on, or None if it cannot be bound (taken, or not root)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            return None
        sock.listen(16)
        sock.setblocking(False)
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ)
        return int(sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                self.connections.append(listener.getsockname()[:2])
                conn.close()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self._sockets:
            self._selector.unregister(sock)
            sock.close()
        self._selector.close()


@dataclass
class Inside:
    """Canaries on 127.0.0.1 and ::1 (``port``) and on a loopback address of our own
    (``address``) at the ports discovery would use by default."""

    canaries: Canaries
    port: int
    address: str
    default_ports: tuple[int, ...]

    @property
    def connections(self) -> list[tuple[str, int]]:
        return self.canaries.connections


@pytest.fixture
def inside() -> Iterator[Inside]:
    canaries = Canaries()
    port = canaries.listen("127.0.0.1")
    assert port is not None
    canaries.listen("::1", port)  # where the host has IPv6 loopback
    # A loopback address no one else uses, so binding the well-known ports cannot clash
    # with another test run on this machine (binding them needs root; skipped otherwise).
    address = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    bound = tuple(p for p in DISCOVERY_PORTS if canaries.listen(address, p) is not None)
    canaries.start()
    yield Inside(canaries, port, address, bound)
    canaries.close()


@pytest.fixture
def local_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalDns]:
    """The machine's resolver, as dnspython reads it, is a local DNS server for this test."""
    server = LocalDns()
    server.start()

    def read_resolv_conf(self: dns.resolver.BaseResolver, _filename: object) -> None:
        self.nameservers = ["127.0.0.1"]
        self.port = server.port

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", read_resolv_conf)
    yield server
    server.stop()


@pytest.fixture
async def guarded(db_dsn: str, keyring: KeyRing, test_ca: LocalCA) -> AsyncIterator[RunningApi]:
    """The real API with private hosts refused, as in production."""
    async with serve(
        db_dsn, keyring, test_ca, allow_private_hosts=False, imap_timeout=5.0,
        ispdb_url="https://ispdb.ssrf.test/v1.1/",
    ) as running:  # fmt: skip
        yield running


async def _account(pool: Pool, settings: dict[str, object] | None = None) -> tuple[UUID, str]:
    account_id = AccountId(uuid4())
    async with pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email=f"{account_id}@example.com", display_name=None,
            bucket=BucketNo(0), provider=None, settings=settings or {}, auth_kind="password",
            credentials=b"-", key_id="k1",
        )  # fmt: skip
        token = await tokens.issue(conn, account_id=account_id, label="ssrf")
    return account_id, token


def _expect(answer: httpx.Response, status: int, error: str, label: str) -> list[str]:
    """Mismatches (empty when ``answer`` is the clear refusal wanted)."""
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code == status and body.get("error") == error and body.get("detail"):
        return []
    return [f"{label}: {answer.status_code} {answer.text[:200]}"]


# -- POST /v1/accounts with explicit hosts -----------------------------------------------


async def test_explicit_hosts_inside_are_refused(guarded: RunningApi, inside: Inside) -> None:
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=guarded.base, timeout=30) as client:
        for host in INSIDE_HOSTS + BRACKETED_HOSTS:
            for security in ("tls", "starttls"):
                answer = await client.post("/v1/accounts", json={
                    "email": "victim@example.com", "password": "pw",
                    "imap": {"host": host, "port": inside.port, "security": security},
                    "smtp": {"host": host, "port": inside.port, "security": "starttls"},
                })  # fmt: skip
                mismatch = _expect(answer, 422, "invalid_settings", f"{host} ({security})")
                if not mismatch and "non-public" not in answer.json()["detail"]:
                    mismatch = [f"{host}: the detail does not say why: {answer.text}"]
                wrong += mismatch
    assert wrong == []
    assert inside.connections == []


async def test_hosts_that_are_no_host_names_are_invalid_requests(guarded: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=guarded.base, timeout=30) as client:
        for host in NO_HOSTS:
            answer = await client.post("/v1/accounts", json={
                "email": "victim@example.com", "password": "pw",
                "imap": {"host": host, "port": 993, "security": "tls"},
            })  # fmt: skip
            assert answer.status_code == 422, (host, answer.text)
            body = answer.json()
            assert body["error"] == "invalid_request" and "imap.host" in body["fields"], body


async def test_smtp_hosts_inside_are_refused_before_connecting(inside: Inside) -> None:
    """Linking checks IMAP first, so through the API the SMTP check is never reached while
    IMAP is refused; the SMTP paths are swept directly: the linking step and the client."""
    policy = ConnectionPolicy(allow_private_hosts=False, timeout=5)
    for host in INSIDE_HOSTS:
        endpoint = Endpoint(host, inside.port, Security.STARTTLS)
        imap = Endpoint("imap.example.com", 993, Security.TLS)
        request = LinkRequest(email="v@example.com", password="pw", imap=imap, smtp=endpoint)
        with pytest.raises(LinkError) as refused:
            await verify_smtp(request, policy)
        assert refused.value.code == "invalid_settings", (host, refused.value.detail)
        settings = smtp.SmtpSettings(endpoint, timeout=5, allow_private_hosts=False)
        with pytest.raises(ForbiddenAddress):
            await smtp.verify_login(settings, PasswordLogin("v", "pw"))
    assert inside.connections == []


async def test_smtp_connects_to_the_address_it_checked(
    monkeypatch: pytest.MonkeyPatch, test_ca: LocalCA
) -> None:
    """DNS rebinding: the SMTP client must not resolve the name a second time. A stand-in
    for the check answers 127.0.0.2 for ``localhost`` (as a public answer would be); the only
    server listens there, while a second resolution would say 127.0.0.1. TLS still verifies
    the *name*."""
    checked: list[str] = []

    async def stand_in(host: str, port: int, *, allow_private: bool) -> str:
        checked.append(host)
        return "127.0.0.2"

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 checked address ESMTP\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    monkeypatch.setattr(smtp, "resolve_checked", stand_in)
    server = await asyncio.start_server(greet, "127.0.0.2", 0, ssl=test_ca.server_context())
    async with server:
        port = server.sockets[0].getsockname()[1]
        settings = smtp.SmtpSettings(
            Endpoint("localhost", port, Security.TLS), ca_files=(test_ca.ca_file,), timeout=5,
            allow_private_hosts=False,
        )  # fmt: skip
        client = await smtp._connect(settings)
        try:
            assert client.get_transport_info("peername")[0] == "127.0.0.2"
            assert client.get_transport_info("sslcontext") is not None
        finally:
            client.close()
    assert checked == ["localhost"]


# -- POST /v1/accounts with discovery ------------------------------------------------------


async def test_discovered_hosts_inside_are_refused(
    guarded: RunningApi, inside: Inside, local_dns: LocalDns
) -> None:
    """A user's domain whose every record points inside: the ISPDB host, autoconfig hosts,
    SRV targets (at a canary's port), the MX host and every guess."""
    here, port = inside.address, inside.port
    local_dns.add(
        "ispdb.ssrf.test. 60 IN A 127.0.0.1",
        f"evil.test. 60 IN A {here}", "evil.test. 60 IN AAAA ::1",
        f"autoconfig.evil.test. 60 IN A {here}",
        f"_imaps._tcp.evil.test. 60 IN SRV 0 1 {port} in.evil.test.",
        f"_imap._tcp.evil.test. 60 IN SRV 0 1 {port} in.evil.test.",
        f"_submissions._tcp.evil.test. 60 IN SRV 0 1 {port} in.evil.test.",
        f"_submission._tcp.evil.test. 60 IN SRV 0 1 {port} in.evil.test.",
        "in.evil.test. 60 IN A 127.0.0.1", "in.evil.test. 60 IN AAAA ::ffff:7f00:1",
        "evil.test. 60 IN MX 10 mx.evil.test.", "mx.evil.test. 60 IN A 10.0.0.1",
        "imap.evil.test. 60 IN A 169.254.169.254", f"mail.evil.test. 60 IN A {here}",
        "smtp.evil.test. 60 IN AAAA fd00::1", "smtp.evil.test. 60 IN A 192.168.7.7",
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=guarded.base, timeout=60) as client:
        answer = await client.post("/v1/accounts", json={"email": "v@evil.test", "password": "pw"})
    assert _expect(answer, 422, "discovery_failed", "evil.test") == []
    detail = answer.json()["detail"]
    for refused in ("127.0.0.1", here, "169.254.169.254"):
        assert f"non-public address(es) {refused}" in detail, (refused, detail)
    assert inside.connections == []
    asked = {name for name, _ in local_dns.queries}
    assert {"autoconfig.evil.test", "_imaps._tcp.evil.test", "evil.test"} <= asked


@pytest.mark.parametrize(
    "email",
    [
        "v@2130706433.test",
        "v@[127.0.0.1]",
        "v@[IPv6:::1]",
        "v@localhost",
    ],
)  # fmt: skip
async def test_address_literal_domains_are_refused(
    guarded: RunningApi, inside: Inside, local_dns: LocalDns, email: str
) -> None:
    async with httpx.AsyncClient(base_url=guarded.base, timeout=60) as client:
        answer = await client.post("/v1/accounts", json={"email": email, "password": "pw"})
    assert 400 <= answer.status_code < 500, answer.text
    assert set(answer.json()) >= {"error", "detail"}
    assert inside.connections == []


# -- PUT /v1/account/credentials ----------------------------------------------------------


async def test_reauthorising_against_stored_inside_hosts_is_refused(
    guarded: RunningApi, db_pool: Pool, inside: Inside
) -> None:
    """Stored settings can point inside (linked in dev mode, or the name moved since): the
    re-login is refused like a new link."""
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=guarded.base, timeout=30) as client:
        for host in ("127.1", "::ffff:127.0.0.1", "169.254.169.254"):
            server = {"host": host, "port": inside.port, "security": "tls"}
            _, token = await _account(db_pool, {"imap": server, "smtp": server})
            answer = await client.put(
                "/v1/account/credentials", json={"password": "pw"},
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            wrong += _expect(answer, 422, "invalid_settings", host)
    assert wrong == []
    assert inside.connections == []


# -- push subscriptions and the pushes themselves ------------------------------------------


async def test_push_endpoints_inside_are_refused(
    guarded: RunningApi, db_pool: Pool, inside: Inside
) -> None:
    _, token = await _account(db_pool)
    wrong: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=guarded.base, headers=headers) as client:
        for url in INSIDE_URLS:
            endpoint = url.format(port=inside.port)
            answer = await client.post(
                "/v1/push/subscriptions", json={"device_id": "d1", "endpoint": endpoint}
            )
            wrong += _expect(answer, 422, "invalid_endpoint", endpoint)
        kept = await client.post(
            "/v1/push/subscriptions",
            json={"device_id": "ok", "endpoint": "https://push.example.com/p"},
        )
        assert kept.status_code == 201  # names are accepted; the worker checks them
    assert wrong == []
    assert inside.connections == []


async def test_pushes_to_names_that_lead_inside_are_refused(
    db_pool: Pool, db_dsn: str, inside: Inside
) -> None:
    """A subscription whose host resolves inside at push time (stored in dev mode, or its
    DNS changed after the API's check) is not called: the worker checks every push."""
    account_id, _ = await _account(db_pool)
    endpoints = {
        "name": f"https://localhost:{inside.port}/p",
        "decimal": f"https://2130706433:{inside.port}/p",
        "short": f"https://127.1:{inside.port}/p",
        "mapped": f"https://[::ffff:127.0.0.1]:{inside.port}/p",
        "plain": f"http://localhost:{inside.port}/p",
    }
    async with db_pool.acquire() as conn:
        for device, endpoint in endpoints.items():
            await push_subscriptions.upsert(
                conn, account_id=account_id, device_id=device, endpoint=endpoint
            )
    async with httpx.AsyncClient() as http:
        pusher = Pusher(pool=db_pool, dsn=db_dsn, http=http, owns=lambda _: True,
                        tuning=PushTuning(attempts=2))  # fmt: skip
        outcomes = await pusher.push(account_id, state=1, reason="new_mail")
    assert outcomes == dict.fromkeys(endpoints, Outcome.FAILED)
    assert inside.connections == []


# -- redirects are answers, never second requests ------------------------------------------


@dataclass
class Redirector:
    """An HTTPS server standing in for a public one: every request is answered with a
    redirect to a canary inside."""

    port: int
    paths: list[str]


@pytest.fixture
async def redirecting(test_ca: LocalCA, inside: Inside) -> AsyncIterator[Redirector]:
    paths: list[str] = []
    location = f"https://127.0.0.1:{inside.port}/inside".encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            paths.append(head.split(b" ", 2)[1].decode())
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + location
                         + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=test_ca.server_context())
    async with server:
        yield Redirector(server.sockets[0].getsockname()[1], paths)


async def test_redirects_to_inside_are_not_followed(
    db_pool: Pool, db_dsn: str, test_ca: LocalCA, inside: Inside, redirecting: Redirector
) -> None:
    base = f"https://localhost:{redirecting.port}"
    ca_files = (test_ca.ca_file,)
    # a device push (dev allowance on, so the stand-in is reachable at all)
    account_id, _ = await _account(db_pool)
    async with db_pool.acquire() as conn:
        await push_subscriptions.upsert(
            conn, account_id=account_id, device_id="d", endpoint=f"{base}/push"
        )
    async with https_client(ca_files) as http:
        pusher = Pusher(pool=db_pool, dsn=db_dsn, http=http, owns=lambda _: True,
                        allow_private_hosts=True, tuning=PushTuning(attempts=1))  # fmt: skip
        assert await pusher.push(account_id, state=1, reason="new_mail") == {"d": Outcome.FAILED}
    # the OAuth token endpoint
    provider = Provider("custom", f"{base}/token", client_id="mailish")
    broker = TokenBroker(ProviderRegistry({"custom": provider}), ca_files=ca_files, timeout=5)
    try:
        with pytest.raises(OAuthRejected):
            await broker.refresh("custom", "refresh-token")
    finally:
        await broker.aclose()
    # the pre-send check service
    composed = composing.compose(
        composing.Sender("a@example.com", None),
        composing.Draft(to=["b@example.com"], cc=[], bcc=[], subject="s", text="t", html=None,
                        attachments=[]),
        now=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    with pytest.raises(TransientError):
        await presend.check(
            composed, account_id=uuid4(), max_size=1 << 20, max_recipients=5,
            service_url=f"{base}/check", ca_files=ca_files,
        )  # fmt: skip
    assert redirecting.paths == ["/push", "/token", "/check"]
    assert inside.connections == []
