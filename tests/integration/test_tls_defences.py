"""Every outbound TLS client refuses a bad certificate before it sends anything that matters.

The clients: IMAP (implicit TLS and STARTTLS), SMTP (implicit TLS and STARTTLS), the
autoconfig HTTPS fetcher, the OAuth token endpoint client, the pre-send service client and
device pushes. Each talks to a scripted server that speaks just enough of its protocol to
reach the login (or the POST) and records every line it hears, before and after TLS. The
server presents one of four certificates:

- ``good``: from the CA the client trusts, for ``localhost``, valid. The control: the client
  gets through and the server hears the credentials, so the harness would notice a leak;
- ``untrusted``: from another CA;
- ``wrong_host``: from the trusted CA, for another name;
- ``expired``: from the trusted CA, for ``localhost``, valid until yesterday.

Bad certificates must end in an error that names the TLS problem, and the server must hear
nothing after the handshake and no credentials before it. The SMTP STARTTLS-stripping cases
(no STARTTLS offered, 454 or 502 to STARTTLS, plaintext injected after "220 Ready to start
TLS") are here too; IMAP's are in ``test_imap_connection.py``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import pytest
import trustme

from mailish.domain import composing
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import MailishError, TLSError, TransientError
from mailish.domain.ids import AccountId, BucketNo
from mailish.domain.logins import PasswordLogin
from mailish.mail import smtp
from mailish.mail.autoconfig.fetching import FetchFailed, Network, fetch
from mailish.mail.autoconfig.resolving import Resolver
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.oauth.broker import OAuthUnavailable, TokenBroker
from mailish.mail.oauth.providers import Provider, ProviderRegistry
from mailish.mail.tls import https_client
from mailish.services import presend
from mailish.store import accounts, push_subscriptions
from mailish.store.connecting import Pool
from mailish.worker.pushing import Outcome, Pusher, PushTuning
from tests.harness.dns_server import LocalDns

USER, PASSWORD = "tls-user", "canary-password-7Qx"
SECRET_MARKERS = (PASSWORD.encode(), base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()))
BAD = ("untrusted", "wrong_host", "expired")
#: What the error must say for each bad certificate.
REASONS = {
    "untrusted": "certificate not trusted",
    "wrong_host": "certificate does not match the host name",
    "expired": "certificate is outside its validity period",
}
TOKEN_ANSWER = b'{"access_token": "at", "token_type": "bearer", "expires_in": 3600, "allow": true}'


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca_file: Path  # the one CA the clients trust
    servers: dict[str, ssl.SSLContext]


def _server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    trusted, rogue = trustme.CA(), trustme.CA(organization_name="rogue CA")
    ca_file = tmp_path_factory.mktemp("tls-defences") / "trusted.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    now = dt.datetime.now(dt.UTC)
    leaves = {
        "good": trusted.issue_cert("localhost", "127.0.0.1"),
        "untrusted": rogue.issue_cert("localhost", "127.0.0.1"),
        "wrong_host": trusted.issue_cert("elsewhere.example"),
        "expired": trusted.issue_cert(
            "localhost", "127.0.0.1",
            not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1),
        ),
    }  # fmt: skip
    return Certs(ca_file, {kind: _server_context(leaf) for kind, leaf in leaves.items()})


# -- scripted servers ------------------------------------------------------------------------


@dataclass
class Heard:
    """What one server heard: lines before TLS, and everything after the handshake."""

    plain: list[bytes] = field(default_factory=list)
    secure: list[bytes] = field(default_factory=list)

    def secrets_seen(self) -> bool:
        everything = b"".join(self.plain + self.secure)
        return any(marker in everything for marker in SECRET_MARKERS)


class Conversation:
    """One connection: line I/O that records, and the switch to TLS."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: Heard
    ) -> None:
        self.reader, self.writer, self.heard = reader, writer, heard
        self.secure = False

    async def line(self) -> bytes:
        line = await self.reader.readline()
        if line:
            (self.heard.secure if self.secure else self.heard.plain).append(line)
        return line

    async def read(self, size: int) -> bytes:
        data = await self.reader.readexactly(size)
        (self.heard.secure if self.secure else self.heard.plain).append(data)
        return data

    async def say(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context)
        self.secure = True


Script = Callable[[Conversation, ssl.SSLContext], Awaitable[None]]


async def imap_session(talk: Conversation, context: ssl.SSLContext, *, starttls: bool) -> None:
    caps = b"IMAP4rev1 AUTH=PLAIN" + (b" STARTTLS" if starttls and not talk.secure else b"")
    await talk.say(b"* OK ready\r\n")
    while line := await talk.line():
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if command == b"CAPABILITY":
            await talk.say(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
        elif command == b"STARTTLS":
            await talk.say(tag + b" OK Begin TLS\r\n")
            await talk.start_tls(context)
            caps = b"IMAP4rev1 AUTH=PLAIN"
        elif command == b"AUTHENTICATE":
            await talk.say(b"+ \r\n")
            await talk.line()
            await talk.say(tag + b" OK logged in\r\n")
        elif command == b"LOGOUT":
            await talk.say(b"* BYE\r\n" + tag + b" OK bye\r\n")
            return
        else:
            await talk.say(tag + b" OK done\r\n")


async def smtp_session(
    talk: Conversation, context: ssl.SSLContext, *, starttls: bool, answer: bytes = b""
) -> None:
    """``answer`` replaces the normal "220 Ready to start TLS" (a refusal or an injection)."""
    await talk.say(b"220 fake ESMTP\r\n")
    while line := await talk.line():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb in (b"EHLO", b"HELO"):
            offer = b"250-STARTTLS\r\n" if starttls and not talk.secure else b""
            await talk.say(b"250-fake\r\n" + offer + b"250 AUTH PLAIN LOGIN\r\n")
        elif verb == b"STARTTLS":
            if answer:
                await talk.say(answer)
                if answer.startswith(b"220"):
                    await asyncio.sleep(0.5)  # a stripper that never speaks TLS
                    return
                continue
            await talk.say(b"220 Ready to start TLS\r\n")
            await talk.start_tls(context)
        elif verb == b"AUTH":
            await talk.say(b"235 accepted\r\n")
        elif verb == b"QUIT":
            await talk.say(b"221 bye\r\n")
            return
        else:
            await talk.say(b"250 ok\r\n")


async def http_session(talk: Conversation, context: ssl.SSLContext) -> None:
    await talk.start_tls(context)
    length = 0
    while (line := await talk.line()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await talk.read(length)
    await talk.say(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(TOKEN_ANSWER), TOKEN_ANSWER)
    )


def over_tls(session: Callable[..., Awaitable[None]], **options: object) -> Script:
    async def script(talk: Conversation, context: ssl.SSLContext) -> None:
        await talk.start_tls(context)
        await session(talk, context, **options)

    return script


def in_clear(session: Callable[..., Awaitable[None]], **options: object) -> Script:
    async def script(talk: Conversation, context: ssl.SSLContext) -> None:
        await session(talk, context, **options)

    return script


Start = Callable[[Script, ssl.SSLContext], Awaitable[tuple[int, Heard]]]


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    """Start a scripted server on a free loopback port; stopped after the test."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(script: Script, context: ssl.SSLContext) -> tuple[int, Heard]:
        heard = Heard()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await script(Conversation(reader, writer, heard), context)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass  # the client hung up on a certificate it refused: expected
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], heard

    yield start
    for server in servers:
        server.close()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


# -- the clients -----------------------------------------------------------------------------


@dataclass
class Env:
    ca_file: Path
    dns: LocalDns
    pool: Pool | None
    dsn: str | None

    @property
    def ca_files(self) -> tuple[Path, ...]:
        return (self.ca_file,)


Client = Callable[[Env, int], Awaitable[None]]


async def imap_client(security: Security, env: Env, port: int) -> None:
    settings = ImapSettings(
        Endpoint("localhost", port, security), ca_files=env.ca_files, timeout=5,
        allow_private_hosts=True,
    )  # fmt: skip
    conn = await ImapConnection.open(settings)
    try:
        await conn.login(PasswordLogin(USER, PASSWORD))
    finally:
        await conn.logout()


async def smtp_client(security: Security, env: Env, port: int) -> None:
    settings = smtp.SmtpSettings(Endpoint("localhost", port, security), ca_files=env.ca_files,
                                 timeout=5, allow_private_hosts=True)  # fmt: skip
    await smtp.verify_login(settings, PasswordLogin(USER, PASSWORD))


async def autoconfig_client(env: Env, port: int) -> None:
    resolver = Resolver(["127.0.0.1"], port=env.dns.port, timeout=2)
    net = Network(resolver, ca_files=env.ca_files, allow_private=True, fetch_timeout=5)
    url = f"https://localhost:{port}/mail/config-v1.1.xml?emailaddress={PASSWORD}%40x.test"
    await fetch(url, net)


async def oauth_client(env: Env, port: int) -> None:
    provider = Provider("custom", f"https://localhost:{port}/token", client_id="mailish",
                        client_secret=PASSWORD)  # fmt: skip
    broker = TokenBroker(ProviderRegistry({"custom": provider}), ca_files=env.ca_files, timeout=5)
    try:
        await broker.refresh("custom", PASSWORD)
    finally:
        await broker.aclose()


async def presend_client(env: Env, port: int) -> None:
    composed = composing.compose(
        composing.Sender(f"{USER}@x.test", None),
        composing.Draft(to=[f"{PASSWORD}@x.test"], cc=[], bcc=[], subject="hi", text="hi",
                        html=None, attachments=[]),
        now=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    reasons = await presend.check(
        composed, account_id=uuid4(), max_size=1 << 20, max_recipients=10,
        service_url=f"https://localhost:{port}/check", ca_files=env.ca_files,
    )  # fmt: skip
    assert reasons == []


class PushFailed(MailishError):
    """Pushes report outcomes, not exceptions; this turns a failed one into an error."""


async def push_client(env: Env, port: int) -> None:
    assert env.pool is not None and env.dsn is not None
    account_id = AccountId(uuid4())
    async with env.pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email=f"{account_id}@x.test", display_name=None,
            bucket=BucketNo(0), provider=None, settings={}, auth_kind="password",
            credentials=b"-", key_id="k1",
        )  # fmt: skip
        await push_subscriptions.upsert(
            conn, account_id=account_id, device_id="phone",
            endpoint=f"https://localhost:{port}/push/{PASSWORD}",
        )  # fmt: skip
    async with https_client(env.ca_files) as http:
        pusher = Pusher(pool=env.pool, dsn=env.dsn, http=http, owns=lambda _: True,
                        allow_private_hosts=True, tuning=PushTuning(attempts=1))  # fmt: skip
        outcomes = await pusher.push(account_id, state=1, reason="new_mail")
    if outcomes != {"phone": Outcome.DELIVERED}:
        raise PushFailed(f"push outcome {outcomes}")


@dataclass(frozen=True)
class Case:
    client: Client
    script: Script
    #: Errors the client may raise for a bad certificate (the message is checked too,
    #: except for pushes, whose outcome is all the worker reports).
    errors: tuple[type[Exception], ...]
    names_reason: bool = True


def _bind(function: Callable[..., Awaitable[None]], security: Security) -> Client:
    async def client(env: Env, port: int) -> None:
        await function(security, env, port)

    return client


CASES = {
    "imap-tls": Case(_bind(imap_client, Security.TLS),
                     over_tls(imap_session, starttls=False), (TLSError,)),
    "imap-starttls": Case(_bind(imap_client, Security.STARTTLS),
                          in_clear(imap_session, starttls=True), (TLSError,)),
    "smtp-tls": Case(_bind(smtp_client, Security.TLS),
                     over_tls(smtp_session, starttls=False), (TLSError,)),
    "smtp-starttls": Case(_bind(smtp_client, Security.STARTTLS),
                          in_clear(smtp_session, starttls=True), (TLSError,)),
    "autoconfig": Case(autoconfig_client, in_clear(http_session), (FetchFailed,)),
    "oauth-token": Case(oauth_client, in_clear(http_session), (OAuthUnavailable,)),
    "presend": Case(presend_client, in_clear(http_session), (TransientError,)),
    "push": Case(push_client, in_clear(http_session), (PushFailed,), names_reason=False),
}  # fmt: skip


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDns]:
    server = LocalDns()
    server.add("localhost. 60 IN A 127.0.0.1")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(certs: Certs, dns: LocalDns, request: pytest.FixtureRequest) -> Env:
    """Only pushes need a database (subscriptions live there); the rest skip its setup."""
    if (
        getattr(request.node, "callspec", None)
        and request.node.callspec.params.get("name") == "push"
    ):
        pool, dsn = request.getfixturevalue("db_pool"), request.getfixturevalue("db_dsn")
        return Env(certs.ca_file, dns, pool, dsn)
    return Env(certs.ca_file, dns, None, None)


@pytest.mark.parametrize("name", CASES)
async def test_good_certificate_gets_through(
    name: str, certs: Certs, env: Env, scripted: Start
) -> None:
    """The control: with a valid certificate the same server hears the secret, after TLS."""
    case = CASES[name]
    port, heard = await scripted(case.script, certs.servers["good"])
    await case.client(env, port)
    assert heard.secure, "nothing was said over TLS"
    assert PASSWORD.encode() not in b"".join(heard.plain)
    assert heard.secrets_seen()


@pytest.mark.parametrize("cert", BAD)
@pytest.mark.parametrize("name", CASES)
async def test_bad_certificate_is_refused_before_anything_is_sent(
    name: str, cert: str, certs: Certs, env: Env, scripted: Start
) -> None:
    case = CASES[name]
    port, heard = await scripted(case.script, certs.servers[cert])
    with pytest.raises(case.errors) as refused:
        async with asyncio.timeout(20):
            await case.client(env, port)
    if case.names_reason:
        assert REASONS[cert] in str(refused.value), str(refused.value)
    assert heard.secure == [], "the client talked over a connection it should have refused"
    assert not heard.secrets_seen()


# -- SMTP STARTTLS stripping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (None, TLSError, "does not offer STARTTLS"),
        (b"454 TLS not available due to temporary reason\r\n", smtp.SmtpTemporary, "454"),
        (b"502 command not implemented\r\n", TLSError, "refused STARTTLS (502"),
        (b"220 Ready to start TLS\r\n250 AUTH PLAIN\r\n235 ok\r\n", MailishError, ""),
    ],
    ids=["not-offered", "454", "502", "injected-after-220"],
)
async def test_smtp_starttls_stripping_aborts_before_auth(
    answer: bytes | None, error: type[Exception], says: str, certs: Certs, env: Env,
    scripted: Start,
) -> None:  # fmt: skip
    if answer is None:
        script = in_clear(smtp_session, starttls=False)
    else:
        script = in_clear(smtp_session, starttls=True, answer=answer)
    port, heard = await scripted(script, certs.servers["good"])
    with pytest.raises(error) as refused:
        async with asyncio.timeout(20):
            await smtp_client(Security.STARTTLS, env, port)
    assert says in str(refused.value)
    verbs = [line.split(b" ", 1)[0].strip().upper() for line in heard.plain]
    assert b"AUTH" not in verbs and b"MAIL" not in verbs, verbs
    assert not heard.secrets_seen()
    assert heard.secure == []
