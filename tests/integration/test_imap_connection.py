"""Our IMAP connection against a real Dovecot, and against scripted hostile servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mailish.domain.endpoints import Endpoint, PlaintextRefused, Security
from mailish.domain.errors import AuthError, TLSError
from mailish.domain.logins import OAuth2Login, PasswordLogin
from mailish.mail.hosts import ForbiddenAddress
from mailish.mail.imap import wire
from mailish.mail.imap.connection import ImapConnection, ImapSettings, StartTlsRefused
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.oauth import make_token

AFTER_LOGIN = {"IDLE", "CONDSTORE", "QRESYNC", "MOVE", "UIDPLUS", "SPECIAL-USE", "NOTIFY"}


def settings_for(dovecot: Dovecot, ca: LocalCA, security: Security) -> ImapSettings:
    port = dovecot.imaps_port if security is Security.TLS else dovecot.imap_port
    return ImapSettings(
        Endpoint("localhost", port, security),
        ca_files=(ca.ca_file,),
        timeout=10,
        allow_private_hosts=True,
    )


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.TLS])
async def test_login_and_capabilities(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser, security: Security
) -> None:
    conn = await ImapConnection.open(settings_for(dovecot, test_ca, security))
    try:
        assert "IMAP4REV1" in conn.capabilities
        assert "STARTTLS" not in conn.capabilities or security is Security.TLS
        await conn.login(PasswordLogin(mail_user.name, mail_user.password))
        assert conn.capabilities >= AFTER_LOGIN
        listing = await conn.command("LIST", b'""', b'"*"')
        names = {d.values[-1] for d in listing.of("LIST")}
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= names
    finally:
        await conn.logout()
    assert conn.closed


async def test_wrong_password_is_an_auth_error(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    conn = await ImapConnection.open(settings_for(dovecot, test_ca, Security.TLS))
    try:
        with pytest.raises(AuthError):
            await conn.login(PasswordLogin(mail_user.name, "wrong"))
    finally:
        await conn.logout()


async def test_xoauth2_accepted_and_rejected_without_hanging(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    """aioimaplib hangs on a rejected XOAUTH2 token (HARNESS.md defect 4); we answer the
    error challenge and get a prompt NO."""
    settings = settings_for(dovecot, test_ca, Security.STARTTLS)
    good = await ImapConnection.open(settings)
    await good.login(OAuth2Login(mail_user.name, make_token(mail_user.name)))
    await good.logout()

    bad = await ImapConnection.open(settings)
    started = time.monotonic()
    try:
        with pytest.raises(AuthError):
            await bad.login(OAuth2Login(mail_user.name, make_token("someone-else")))
        assert time.monotonic() - started < 3
        # the connection is still usable after the rejection
        await bad.command("NOOP")
    finally:
        await bad.logout()


async def test_untrusted_certificate_is_refused(dovecot: Dovecot) -> None:
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    with pytest.raises(TLSError, match="certificate"):
        await ImapConnection.open(ImapSettings(endpoint, timeout=5, allow_private_hosts=True))
    endpoint = Endpoint("localhost", dovecot.imap_port, Security.STARTTLS)
    with pytest.raises(TLSError, match="certificate"):
        await ImapConnection.open(ImapSettings(endpoint, timeout=5, allow_private_hosts=True))


async def test_plaintext_is_refused_unless_allowed(dovecot: Dovecot, mail_user: MailUser) -> None:
    endpoint = Endpoint("127.0.0.1", dovecot.imap_port, Security.PLAIN)
    with pytest.raises(PlaintextRefused):
        await ImapConnection.open(ImapSettings(endpoint, allow_private_hosts=True))
    conn = await ImapConnection.open(
        ImapSettings(endpoint, allow_plaintext=True, allow_private_hosts=True)
    )
    try:
        await conn.login(PasswordLogin(mail_user.name, mail_user.password))
    finally:
        await conn.logout()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1", "2130706433", "0x7f.1"])
async def test_private_addresses_are_refused_by_default(dovecot: Dovecot, host: str) -> None:
    """SSRF guard: loopback in any spelling is refused before a connection is made."""
    endpoint = Endpoint(host, dovecot.imaps_port, Security.TLS)
    with pytest.raises(ForbiddenAddress):
        await ImapConnection.open(ImapSettings(endpoint, timeout=5))


async def test_large_responses_and_imap_looking_bodies(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    """5,000 FETCH lines in one response (aioimaplib recurses past ~1,000, HARNESS.md defect
    1) and bodies full of protocol-looking lines come back intact."""
    dovecot.load_maildir(mail_user, 5000)
    tricky = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: * BYE\r\n\r\n"
        b"A001 OK fake completion\r\n* BYE not really\r\n+ continue?\r\n{5}\r\n)\r\n"
    )
    dovecot.deliver(mail_user, tricky)
    conn = await ImapConnection.open(settings_for(dovecot, test_ca, Security.TLS))
    try:
        await conn.login(PasswordLogin(mail_user.name, mail_user.password))
        await conn.command("EXAMINE", b"INBOX")
        flags = await conn.command("UID FETCH", b"1:*", b"(UID FLAGS)")
        fetched = flags.of("FETCH")
        assert len(fetched) == 5001
        uids = [int(wire.flatten_pairs(f.values[0])["UID"]) for f in fetched]  # type: ignore[arg-type]
        assert len(set(uids)) == 5001
        body = await conn.command("UID FETCH", str(max(uids)).encode(), b"(BODY.PEEK[])")
        items = wire.flatten_pairs(body.of("FETCH")[0].values[0])  # type: ignore[arg-type]
        assert items["BODY[]"] == tricky
    finally:
        await conn.logout()


async def test_connections_sharing_the_tls_read_buffer_read_their_own_bytes(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    """A thread's TLS connections share one read buffer (16 KB less per idle account):
    eight connections fetching different 1 MB messages at once each get theirs intact."""
    bodies = [
        b"From: a@example.org\r\nSubject: big %d\r\n\r\n" % i
        + b"".join(b"%d-%06d %s\r\n" % (i, n, b"x" * 60) for n in range(15_000))
        for i in range(8)
    ]
    for body in bodies:
        dovecot.deliver(mail_user, body)
    conns = [
        await ImapConnection.open(settings_for(dovecot, test_ca, Security.TLS)) for _ in bodies
    ]
    try:
        buffers = {id(c._writer.transport._ssl_protocol._ssl_buffer) for c in conns}  # type: ignore[attr-defined]
        assert len(buffers) == 1

        async def fetch(conn: ImapConnection, uid: int) -> bytes:
            await conn.login(PasswordLogin(mail_user.name, mail_user.password))
            await conn.command("EXAMINE", b"INBOX")
            result = await conn.command("UID FETCH", str(uid).encode(), b"(BODY.PEEK[])")
            body = wire.flatten_pairs(result.of("FETCH")[0].values[0])["BODY[]"]  # type: ignore[arg-type]
            assert isinstance(body, bytes)
            return body

        fetched = await asyncio.gather(*(fetch(c, i + 1) for i, c in enumerate(conns)))
        assert fetched == bodies
    finally:
        for conn in conns:
            await conn.logout()


# -- scripted hostile servers --------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[Script], Awaitable[tuple[int, list[bytes]]]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[int, list[bytes]]:
        heard: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            class Recording(asyncio.StreamReader):
                pass

            async def readline() -> bytes:
                line = await original()
                heard.append(line)
                return line

            original = reader.readline
            reader.readline = readline  # type: ignore[method-assign]
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], heard

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _starttls_settings(port: int) -> ImapSettings:
    return ImapSettings(
        Endpoint("127.0.0.1", port, Security.STARTTLS), timeout=3, allow_private_hosts=True
    )


async def _no_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    while line := await reader.readline():
        tag = line.split(b" ", 1)[0]
        if b"CAPABILITY" in line.upper():
            writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
        writer.write(tag + b" OK done\r\n")


async def _preauth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* PREAUTH [CAPABILITY IMAP4rev1] logged in already\r\n")
    while line := await reader.readline():
        writer.write(line.split(b" ", 1)[0] + b" OK done\r\n")


async def _starttls_no(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    while line := await reader.readline():
        tag = line.split(b" ", 1)[0]
        if b"STARTTLS" in line.upper() and b"CAPABILITY" not in line.upper():
            writer.write(tag + b" NO not today\r\n")
            continue
        writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n" + tag + b" OK done\r\n")


async def _injects(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    while line := await reader.readline():
        tag = line.split(b" ", 1)[0]
        if b"STARTTLS" in line.upper() and b"CAPABILITY" not in line.upper():
            writer.write(tag + b" OK Begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
            await writer.drain()
            await asyncio.sleep(0.5)
            return
        writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n" + tag + b" OK done\r\n")


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (_no_starttls, "does not offer STARTTLS"),
        (_preauth, "PREAUTH"),
        (_starttls_no, "refused STARTTLS"),
        (_injects, "before the TLS handshake"),
    ],
)
async def test_starttls_stripping_is_refused_before_credentials(
    fake_server: Callable[[Script], Awaitable[tuple[int, list[bytes]]]],
    script: Script,
    match: str,
) -> None:
    port, heard = await fake_server(script)
    with pytest.raises(StartTlsRefused, match=match):
        await ImapConnection.open(_starttls_settings(port))
    sent = b"".join(heard).upper()
    assert b"LOGIN" not in sent and b"AUTHENTICATE" not in sent


async def test_modifying_commands(dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser) -> None:
    """APPEND, STORE, MOVE, EXPUNGE, CREATE, RENAME, DELETE as the executor will use them."""
    from mailish.domain.utf7 import encode_mailbox_name
    from mailish.mail.imap.session import ImapSession

    conn = await ImapConnection.open(settings_for(dovecot, test_ca, Security.TLS))
    try:
        await conn.login(PasswordLogin(mail_user.name, mail_user.password))
        session = ImapSession(conn)
        await session.enable_extensions()
        projects = encode_mailbox_name("Проекты")
        await session.create(projects)
        raw = b"Subject: appended\r\n\r\nbody\r\n"
        uid = await session.append("INBOX", raw, flags=["\\Seen"])
        assert uid is not None
        await session.select("INBOX", readonly=False)
        await session.store_flags([uid], "+FLAGS.SILENT", ["\\Flagged"])
        flags, _ = await session.fetch_flags(str(uid).encode())
        assert flags[0].flags >= {"\\Seen", "\\Flagged"}
        mapping = await session.move([uid], projects)
        assert list(mapping) == [uid]
        await session.select(projects, readonly=False)
        moved = await session.fetch_messages([mapping[uid]])
        assert moved[0].raw == raw
        await session.store_flags([mapping[uid]], "+FLAGS.SILENT", ["\\Deleted"])
        await session.expunge([mapping[uid]])
        assert await session.search_uids(b"ALL") == []
        await session.unselect()
        await session.rename(projects, "Archive/2026")
        names = {m.raw_name for m in await session.list_mailboxes()}
        assert "Archive/2026" in names
        await session.delete("Archive/2026")
        names = {m.raw_name for m in await session.list_mailboxes()}
        assert "Archive/2026" not in names
    finally:
        await conn.logout()
