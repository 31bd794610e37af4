"""Proof that the test harness itself works, using only stdlib clients.

If these fail, every IMAP/SMTP integration test would fail for reasons that have nothing to do
with mailish, so they check the servers the way the code under test will use them: TLS verified
against the test CA, real XOAUTH2, byte-exact mail, scripted SMTP failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import random
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.ca import LocalCA
from tests.harness.dovecot import (
    Dovecot,
    DovecotError,
    DovecotNotInstalledError,
    MailUser,
    encode_imap_utf7,
    find_binary,
    make_message,
    process_group_members,
)
from tests.harness.oauth import make_token, verify_token, xoauth2_string
from tests.harness.smtp import SmtpServer, SmtpUser
from tests.harness.task_leaks import cancel_tasks, describe_tasks, find_leaked_tasks

pytest_plugins = ["pytester"]

NEEDED_CAPABILITIES = {"IDLE", "CONDSTORE", "QRESYNC", "MOVE", "SPECIAL-USE", "NOTIFY"}

RAW_MESSAGE = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\n"
    b"To: Alice <alice@example.com>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <harness-1@example.org>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b"From the start of a line\r\n" + "Ünïcödé, 8-bit body\r\n".encode() + b"x" * 1500 + b"\r\n"
    b"no final line break"
)


# --- helpers -------------------------------------------------------------------------------------


def capabilities(imap: imaplib.IMAP4) -> set[str]:
    typ, data = imap.capability()
    assert typ == "OK"
    raw = data[0]
    assert isinstance(raw, bytes)
    return set(raw.decode().upper().split())


def fetch(imap: imaplib.IMAP4, uid: int, items: str) -> tuple[bytes, bytes]:
    """UID FETCH one message; return (the response line before the literal, the literal)."""
    typ, data = imap.uid("FETCH", str(uid), f"({items})")
    assert typ == "OK", data
    first = data[0]
    assert isinstance(first, tuple), data
    return first[0], first[1]


def xoauth2(user: str, token: str) -> Callable[[bytes], bytes]:
    """imaplib authobject: the initial response, then an empty answer to an error challenge."""
    sent: list[bool] = []

    def answer(_challenge: bytes) -> bytes:
        if sent:
            return b""
        sent.append(True)
        return xoauth2_string(user, token).encode()

    return answer


@pytest.fixture
def imap_login(dovecot: Dovecot, test_ca: LocalCA) -> Iterator[Callable[[MailUser], imaplib.IMAP4]]:
    """Log users in over implicit TLS; every connection is logged out after the test."""
    opened: list[imaplib.IMAP4] = []

    def login(user: MailUser) -> imaplib.IMAP4:
        imap = imaplib.IMAP4_SSL(
            "localhost", dovecot.imaps_port, ssl_context=test_ca.client_context(), timeout=10
        )
        opened.append(imap)
        imap.login(user.name, user.password)
        return imap

    yield login
    for imap in opened:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


# --- Dovecot -------------------------------------------------------------------------------------


def test_imap_starttls_verifies_ca_and_offers_capabilities(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    with imaplib.IMAP4("localhost", dovecot.imap_port, timeout=10) as imap:
        before = capabilities(imap)
        assert {"STARTTLS", "AUTH=PLAIN", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER"} <= before
        imap.starttls(ssl_context=test_ca.client_context())
        cert = imap.sock.getpeercert()  # type: ignore[attr-defined]
        assert cert is not None
        assert ("DNS", "localhost") in cert["subjectAltName"]
        imap.login(mail_user.name, mail_user.password)
        after = capabilities(imap)
        assert after >= NEEDED_CAPABILITIES
        assert "COMPRESS=DEFLATE" not in after  # off unless Dovecot(compress=True)
        typ, folders = imap.list()
        assert typ == "OK"
        listing = b"\n".join(f for f in folders if isinstance(f, bytes))
        for name in ("Drafts", "Sent", "Trash", "Junk", "Archive"):
            assert f'\\{name}) "/" {name}'.encode() in listing
        imap.logout()


def test_imaps_implicit_tls_verifies_ca(
    dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser
) -> None:
    with imaplib.IMAP4_SSL(
        "127.0.0.1", dovecot.imaps_port, ssl_context=test_ca.client_context(), timeout=10
    ) as imap:
        imap.login(mail_user.name, mail_user.password)
        assert capabilities(imap) >= NEEDED_CAPABILITIES
        imap.logout()
    # The system trust store does not know the test CA: certificate checks are really on.
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            "localhost", dovecot.imaps_port, ssl_context=ssl.create_default_context(), timeout=10
        )


def test_wrong_password_is_rejected_quickly(dovecot: Dovecot, mail_user: MailUser) -> None:
    with imaplib.IMAP4("localhost", dovecot.imap_port, timeout=10) as imap:
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(mail_user.name, mail_user.password + "-wrong")
        assert time.monotonic() - started < 1.0  # auth_failure_delay = 0
        # The penalty for failed logins is off too: the right password still works at once.
        started = time.monotonic()
        imap.login(mail_user.name, mail_user.password)
        assert time.monotonic() - started < 1.0
        imap.logout()


def test_xoauth2_with_minted_token(dovecot: Dovecot, test_ca: LocalCA, mail_user: MailUser) -> None:
    ctx = test_ca.client_context()
    with imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=ctx, timeout=10) as imap:
        imap.authenticate("XOAUTH2", xoauth2(mail_user.name, make_token(mail_user.name)))
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    bad_tokens = {
        "forged": make_token(mail_user.name, key=b"some-other-key"),
        "expired": make_token(mail_user.name, ttl=-60),
        "someone else's": make_token("somebody-else"),
    }

    def rejected(token: str) -> bool:
        with imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=ctx, timeout=10) as c:
            try:
                c.authenticate("XOAUTH2", xoauth2(mail_user.name, token))
            except imaplib.IMAP4.error as exc:
                return "AUTHENTICATIONFAILED" in str(exc)
            return False

    # in parallel: Dovecot 2.3.19 answers each failed login only after ~0.5 s
    with ThreadPoolExecutor(len(bad_tokens)) as pool:
        results = dict(zip(bad_tokens, pool.map(rejected, bad_tokens.values()), strict=True))
    assert results == dict.fromkeys(bad_tokens, True)


def test_oauth_token_roundtrip() -> None:
    token = make_token("alice")
    assert verify_token(token) == "alice"
    assert verify_token(make_token("alice", key=b"nope")) is None
    assert verify_token(make_token("alice", ttl=-1)) is None
    assert verify_token("not.a.jwt") is None
    assert xoauth2_string("a", "t") == "user=a\x01auth=Bearer t\x01\x01"


def test_users_added_changed_removed_at_runtime(
    dovecot: Dovecot, imap_login: Callable[[MailUser], imaplib.IMAP4]
) -> None:
    """Each change is visible to the very next login, even within the same second.

    (A passwd-file would not do: Dovecot re-reads it at most once per second.)
    """
    first = dovecot.add_user()
    imap_login(first)
    second = dovecot.add_user()
    imap_login(second)
    changed = dovecot.set_password(second.name, second.password[::-1])
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(second)
    imap_login(changed)
    dovecot.remove_user(first.name)
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(first)
    named = dovecot.add_user("Named.User@example.test", 'pw with "quotes" and spaces')
    imap_login(named)
    with pytest.raises(ValueError, match="already exists"):
        dovecot.add_user("named.user@example.test")


def test_many_concurrent_connections_from_one_user(dovecot: Dovecot, mail_user: MailUser) -> None:
    """More than Dovecot's defaults (10 per user and IP, 100 processes per service)."""
    conns: list[imaplib.IMAP4] = []
    try:
        for _ in range(120):
            imap = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
            conns.append(imap)
            imap.login(mail_user.name, mail_user.password)
        assert conns[0].noop()[0] == "OK"
    finally:
        for imap in conns:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()


def test_deliver_preserves_bytes_flags_and_date(
    dovecot: Dovecot, mail_user: MailUser, imap_login: Callable[[MailUser], imaplib.IMAP4]
) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    uid = dovecot.deliver(
        mail_user, RAW_MESSAGE, flags=("\\Seen", "$Forwarded"), internal_date=when
    )
    sent_uid = dovecot.deliver(mail_user, RAW_MESSAGE, folder="Sent")
    custom = "Проекты/2024 & more"
    custom_uid = dovecot.deliver(mail_user, RAW_MESSAGE, folder=custom)
    assert dovecot.deliver(mail_user, b"Subject: second\r\n\r\nx\r\n") == uid + 1

    imap = imap_login(mail_user)
    imap.select("INBOX", readonly=True)
    meta, body = fetch(imap, uid, "FLAGS INTERNALDATE BODY.PEEK[]")
    assert body == RAW_MESSAGE
    assert b"\\Seen" in meta
    assert b"$Forwarded" in meta
    assert b'INTERNALDATE "02-Jan-2024 03:04:05 +0000"' in meta

    imap.select("Sent", readonly=True)
    assert fetch(imap, sent_uid, "BODY.PEEK[]")[1] == RAW_MESSAGE
    typ, _ = imap.select('"' + encode_imap_utf7(custom) + '"', readonly=True)
    assert typ == "OK"
    assert fetch(imap, custom_uid, "BODY.PEEK[]")[1] == RAW_MESSAGE


def test_missing_dovecot_names_the_package() -> None:
    with pytest.raises(DovecotNotInstalledError, match="apt-get install -y dovecot-imapd"):
        find_binary("dovecot-not-installed-here")


def test_doveadm_runs_against_this_instance(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.deliver(mail_user, RAW_MESSAGE)
    status = dovecot.doveadm(
        "-f", "flow", "mailbox", "status", "-u", mail_user.name, "messages", "INBOX"
    )
    assert status.strip() == "INBOX messages=1"
    # NUL bytes cannot travel in an IMAP literal: deliver() falls back to doveadm save
    uid = dovecot.deliver(mail_user, b"Subject: nul\r\n\r\na\0b\r\n", flags=["\\Flagged"])
    assert uid == 2
    fetched = dovecot.doveadm(
        "fetch", "-u", mail_user.name, "uid flags", "mailbox", "INBOX", "uid", "2"
    )
    assert "\\Flagged" in fetched
    with pytest.raises(DovecotError, match="doveadm"):
        dovecot.doveadm("mailbox", "status", "-u", mail_user.name, "messages", "No/Such/Box")


def test_load_maildir_200_messages_visible(
    dovecot: Dovecot, mail_user: MailUser, imap_login: Callable[[MailUser], imaplib.IMAP4]
) -> None:
    started = time.monotonic()
    written = dovecot.load_maildir(mail_user, 200, seed=7)
    assert time.monotonic() - started < 2.0
    rnd = random.Random(7)
    expected = {make_message(i, rnd).replace(b"\n", b"\r\n") for i in range(200)}
    assert written == sum(len(m) - m.count(b"\r\n") for m in expected)

    imap = imap_login(mail_user)
    typ, data = imap.select("INBOX", readonly=True)
    assert (typ, data) == ("OK", [b"200"])
    typ, seen = imap.search(None, "SEEN")
    assert len((seen[0] or b"").split()) == 133  # every message but each third is \Seen
    typ, rows = imap.fetch("1:200", "(BODY.PEEK[])")
    assert typ == "OK"
    bodies = {row[1] for row in rows if isinstance(row, tuple)}
    assert bodies == expected
    assert sum(b"multipart/mixed" in b for b in bodies) == 40  # every 5th has an attachment


def test_compress_option_and_fast_clean_stop(tmp_path: Path, test_ca: LocalCA) -> None:
    server = Dovecot(tmp_path / "dovecot", test_ca, compress=True)
    server.start()
    try:
        user = server.add_user()
        with imaplib.IMAP4("localhost", server.imap_port, timeout=10) as imap:
            imap.login(user.name, user.password)
            assert "COMPRESS=DEFLATE" in capabilities(imap)
            imap.logout()
        pgid = server.master_pid
        assert pgid is not None
        assert len(process_group_members(pgid)) >= 4  # master, log, config, auth, ...
    finally:
        started = time.monotonic()
        server.stop()
        stop_time = time.monotonic() - started
    assert stop_time < 1.0
    assert process_group_members(pgid) == []
    # It starts again on the same ports (e.g. for "server restarted" tests).
    port = server.imap_port
    server.start()
    try:
        assert server.imap_port == port
    finally:
        server.stop()


# --- SMTP ----------------------------------------------------------------------------------------

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: harness\r\n"
    b"\r\n"
    b".leading dot survives dot-stuffing\r\n" + "8-bit: Grüße\r\n".encode()
)


def test_smtp_starttls_send_is_recorded_exactly(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA
) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_server.port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")  # AUTH only after STARTTLS
        code, _ = smtp.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530  # require_starttls
        smtp.starttls(context=test_ca.client_context())  # checks the 127.0.0.1 IP SAN
        smtp.login(smtp_user.name, smtp_user.password)
        refused = smtp.sendmail("alice@example.com", ["bob@example.org", "carol@x.test"], MESSAGE)
    assert refused == {}
    [got] = smtp_server.received_by(smtp_user.name)
    assert got.data == MESSAGE
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ["bob@example.org", "carol@x.test"]
    assert got.auth_user == smtp_user.name
    assert got.port == smtp_server.port


def test_smtp_implicit_tls_send_is_recorded_exactly(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA
) -> None:
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
        smtp.login(smtp_user.name, smtp_user.password)
        smtp.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
    [got] = smtp_server.received_by(smtp_user.name)
    assert (got.data, got.rcpt_tos, got.port) == (
        MESSAGE,
        ["bob@example.org"],
        smtp_server.tls_port,
    )


def test_smtp_xoauth2(smtp_server: SmtpServer, test_ca: LocalCA) -> None:
    ctx = test_ca.client_context()
    user = "oauth-sender@example.com"

    def auth(client: smtplib.SMTP, token: str) -> tuple[int, bytes]:
        initial = base64.b64encode(xoauth2_string(user, token).encode()).decode()
        return client.docmd("AUTH", f"XOAUTH2 {initial}")

    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
        smtp.ehlo()
        assert "XOAUTH2" in smtp.esmtp_features["auth"].split()
        code, _ = auth(smtp, make_token(user, key=b"wrong-key"))
        assert code == 334  # error challenge; the client answers with an empty line
        assert smtp.docmd("")[0] == 535
        assert auth(smtp, make_token(user))[0] == 235
        smtp.sendmail(user, ["bob@example.org"], MESSAGE)
    assert [r.data for r in smtp_server.received_by(user)] == [MESSAGE]


def test_smtp_wrong_password_gets_535(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA
) -> None:
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.login(smtp_user.name, "wrong")
        assert err.value.smtp_code == 535
        assert time.monotonic() - started < 1.0
        # unauthenticated sending is refused
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
        assert refused.value.smtp_code == 530


@pytest.fixture
def smtp_client(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA
) -> Iterator[smtplib.SMTP]:
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as client:
        client.login(smtp_user.name, smtp_user.password)
        yield client


def test_smtp_rejected_recipients(
    smtp_client: smtplib.SMTP, smtp_server: SmtpServer, smtp_user: SmtpUser
) -> None:
    refused = smtp_client.sendmail(
        "alice@example.com", ["bob@example.org", "reject-me@x.test", "tempfail-me@x.test"], MESSAGE
    )
    assert {k: v[0] for k, v in refused.items()} == {
        "reject-me@x.test": 550,
        "tempfail-me@x.test": 451,
    }
    [got] = smtp_server.received_by(smtp_user.name)
    assert got.rcpt_tos == ["bob@example.org"]  # partial acceptance
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        smtp_client.sendmail("alice@example.com", ["tempfail-1@x.test"], MESSAGE)
    assert err.value.recipients["tempfail-1@x.test"][0] == 451


def test_smtp_blocked_sender_553(
    smtp_client: smtplib.SMTP, smtp_server: SmtpServer, smtp_user: SmtpUser
) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        smtp_client.sendmail("blocked-sender@example.com", ["bob@example.org"], MESSAGE)
    assert err.value.smtp_code == 553
    assert smtp_server.received_by(smtp_user.name) == []


def test_smtp_content_reject_554(
    smtp_client: smtplib.SMTP, smtp_server: SmtpServer, smtp_user: SmtpUser
) -> None:
    bad = b"X-Test-Reject: yes\r\n" + MESSAGE
    with pytest.raises(smtplib.SMTPDataError) as err:
        smtp_client.sendmail("alice@example.com", ["bob@example.org"], bad)
    assert err.value.smtp_code == 554
    assert smtp_server.received_by(smtp_user.name) == []


def test_smtp_size_limit_552(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_server, "data_size_limit", 2000)  # read per connection
    big = MESSAGE + (b"y" * 76 + b"\r\n") * 40  # about 3.3 KB
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
        smtp.login(smtp_user.name, smtp_user.password)
        assert smtp.esmtp_features["size"] == "2000"
        # declared size (MAIL FROM ... SIZE=n) is refused up front
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            smtp.sendmail("alice@example.com", ["bob@example.org"], big)
        assert err.value.smtp_code == 552
        # undeclared size is refused after DATA
        smtp.rset()
        assert smtp.mail("alice@example.com")[0] == 250
        assert smtp.rcpt("bob@example.org")[0] == 250
        assert smtp.data(big)[0] == 552
    assert smtp_server.received_by(smtp_user.name) == []


def test_smtp_drop_after_data(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_server, "drop_after_data", True)
    ctx = test_ca.client_context()
    with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
        smtp.login(smtp_user.name, smtp_user.password)
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
        assert time.monotonic() - started < 2.0  # closed, not left hanging
    # Same over STARTTLS.
    with smtplib.SMTP("localhost", smtp_server.port, timeout=10) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(smtp_user.name, smtp_user.password)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.sendmail("alice@example.com", ["carol@x.test"], MESSAGE)
    got = smtp_server.wait_for_sync(2, auth_user=smtp_user.name)  # received, never acked
    assert [r.rcpt_tos for r in got] == [["bob@example.org"], ["carol@x.test"]]
    assert all(r.data == MESSAGE for r in got)


async def test_smtp_async_wait_for(
    smtp_server: SmtpServer, smtp_user: SmtpUser, test_ca: LocalCA
) -> None:
    def send() -> None:
        time.sleep(0.05)
        ctx = test_ca.client_context()
        with smtplib.SMTP_SSL("localhost", smtp_server.tls_port, context=ctx, timeout=10) as smtp:
            smtp.login(smtp_user.name, smtp_user.password)
            smtp.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)

    sender = asyncio.create_task(asyncio.to_thread(send))
    got = await smtp_server.wait_for(1, timeout=5, auth_user=smtp_user.name)
    await sender
    assert got[0].data == MESSAGE
    with pytest.raises(TimeoutError):
        await smtp_server.wait_for(2, timeout=0.05, auth_user=smtp_user.name)


def test_smtp_server_restarts_on_same_ports(test_ca: LocalCA) -> None:
    server = SmtpServer(test_ca)
    with server:
        ports = (server.port, server.tls_port)
        user = server.add_user()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", server.port, timeout=2)
    with server:
        assert (server.port, server.tls_port) == ports
        ctx = test_ca.client_context()
        with smtplib.SMTP_SSL("localhost", server.tls_port, context=ctx, timeout=10) as smtp:
            smtp.login(user.name, user.password)
            smtp.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
        assert [r.data for r in server.received] == [MESSAGE]


# --- task leak detection -------------------------------------------------------------------------


def test_find_leaked_tasks_directly() -> None:
    loop = asyncio.new_event_loop()
    try:
        old = loop.create_task(asyncio.sleep(60), name="existed-before")
        before = {old}
        leaky = loop.create_task(asyncio.sleep(60), name="leaky-sleeper")
        quick = loop.create_task(asyncio.sleep(0.02), name="finishes-in-grace")
        leaked = find_leaked_tasks(loop, before, grace=0.2)
        assert leaked == [leaky]
        assert quick.done()
        report = describe_tasks(leaked)
        assert "leaky-sleeper" in report
        assert "sleep" in report
        cancel_tasks(loop, [leaky, old])
        assert leaky.cancelled()
        assert find_leaked_tasks(loop, set(), grace=0) == []
    finally:
        loop.close()


def test_leaked_task_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\n"
        "asyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\n"
        "task_leak_grace = 0.3\n"
    )
    pytester.makepyfile(
        test_inner="""
        import asyncio
        import pytest

        async def test_clean():
            await asyncio.create_task(asyncio.sleep(0))

        async def test_leaks():
            asyncio.create_task(asyncio.sleep(60), name="forgotten-sleeper")

        async def test_finishes_within_grace():
            asyncio.create_task(asyncio.sleep(0.1))

        @pytest.fixture
        async def background():
            task = asyncio.create_task(asyncio.sleep(60), name="fixture-owned")
            yield task
            task.cancel()

        async def test_fixture_cancels_its_task(background):
            assert not background.done()

        @pytest.mark.asyncio(loop_scope="function")
        async def test_function_loop_leak():
            asyncio.create_task(asyncio.sleep(60), name="function-loop-sleeper")

        def test_sync():
            pass

        @pytest.mark.allow_task_leaks
        async def test_allowed():
            asyncio.create_task(asyncio.sleep(60), name="allowed-sleeper")

        async def test_after_allowed_is_clean():
            pass
        """
    )
    result = pytester.runpytest_inprocess(
        "-p", "tests.harness.task_leaks", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=8, errors=2)
    out = result.stdout.str()
    assert re.search(r"ERROR at teardown of test_leaks\b", out)
    assert re.search(r"ERROR at teardown of test_function_loop_leak\b", out)
    assert "forgotten-sleeper" in out
    assert "function-loop-sleeper" in out
    assert "allowed-sleeper" not in out
    assert "fixture-owned" not in out
