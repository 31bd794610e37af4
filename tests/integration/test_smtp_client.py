"""Our SMTP client against a real aiosmtpd submission server."""

from __future__ import annotations

import pytest

from mailish.domain.endpoints import Endpoint, PlaintextRefused, Security
from mailish.domain.errors import AuthError, TLSError
from mailish.domain.logins import OAuth2Login, PasswordLogin
from mailish.mail import smtp
from tests.harness.ca import LocalCA
from tests.harness.oauth import make_token
from tests.harness.smtp import SmtpServer, SmtpUser

MESSAGE = (
    b"From: Sender <sender@example.com>\r\nTo: Friend <friend@example.org>\r\n"
    b"Subject: hello\r\nMessage-ID: <1@example.com>\r\n\r\n"
    b"Line one\r\n.leading dot\r\nA001 OK not a tag\r\n"
)


def settings(server: SmtpServer, ca: LocalCA, security: Security) -> smtp.SmtpSettings:
    port = server.tls_port if security is Security.TLS else server.port
    return smtp.SmtpSettings(
        Endpoint("localhost", port, security), ca_files=(ca.ca_file,), allow_private_hosts=True
    )


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.TLS])
async def test_authenticated_send_delivers_exact_bytes(
    smtp_server: SmtpServer, test_ca: LocalCA, smtp_user: SmtpUser, security: Security
) -> None:
    result = await smtp.send_raw(
        settings(smtp_server, test_ca, security),
        PasswordLogin(smtp_user.name, smtp_user.password),
        envelope_from="sender@example.com",
        recipients=["friend@example.org", "other@example.org"],
        message=MESSAGE,
    )
    assert result.accepted == ("friend@example.org", "other@example.org")
    assert result.refused == {}
    [got] = smtp_server.received_by(smtp_user.name)
    assert got.data == MESSAGE
    assert got.mail_from == "sender@example.com"
    assert got.rcpt_tos == ["friend@example.org", "other@example.org"]


async def test_verify_login(smtp_server: SmtpServer, test_ca: LocalCA, smtp_user: SmtpUser) -> None:
    conf = settings(smtp_server, test_ca, Security.STARTTLS)
    await smtp.verify_login(conf, PasswordLogin(smtp_user.name, smtp_user.password))
    with pytest.raises(AuthError):
        await smtp.verify_login(conf, PasswordLogin(smtp_user.name, "wrong"))


async def test_xoauth2_send(smtp_server: SmtpServer, test_ca: LocalCA, smtp_user: SmtpUser) -> None:
    login = OAuth2Login(smtp_user.name, make_token(smtp_user.name))
    await smtp.send_raw(
        settings(smtp_server, test_ca, Security.TLS),
        login,
        envelope_from="sender@example.com",
        recipients=["friend@example.org"],
        message=MESSAGE,
    )
    assert len(smtp_server.received_by(smtp_user.name)) == 1
    with pytest.raises(AuthError):
        await smtp.verify_login(
            settings(smtp_server, test_ca, Security.TLS),
            OAuth2Login(smtp_user.name, make_token("intruder")),
        )


async def test_partial_acceptance_reports_refused_recipients(
    smtp_server: SmtpServer, test_ca: LocalCA, smtp_user: SmtpUser
) -> None:
    result = await smtp.send_raw(
        settings(smtp_server, test_ca, Security.STARTTLS),
        PasswordLogin(smtp_user.name, smtp_user.password),
        envelope_from="sender@example.com",
        recipients=["ok@example.org", "reject-me@example.org", "tempfail-x@example.org"],
        message=MESSAGE,
    )
    assert result.accepted == ("ok@example.org",)
    assert result.refused["reject-me@example.org"].code == 550
    assert result.refused["tempfail-x@example.org"].code == 451
    [got] = smtp_server.received_by(smtp_user.name)
    assert got.rcpt_tos == ["ok@example.org"]


@pytest.mark.parametrize(
    ("sender", "recipients", "extra_header", "error", "code"),
    [
        ("sender@example.com", ["reject@example.org"], b"", smtp.SmtpRejected, 550),
        ("sender@example.com", ["tempfail@example.org"], b"", smtp.SmtpTemporary, 451),
        ("blocked@example.com", ["ok@example.org"], b"", smtp.SmtpRejected, 553),
        (
            "sender@example.com",
            ["ok@example.org"],
            b"X-Test-Reject: yes\r\n",
            smtp.SmtpRejected,
            554,
        ),
    ],
)
async def test_rejections_are_classified(
    smtp_server: SmtpServer,
    test_ca: LocalCA,
    smtp_user: SmtpUser,
    sender: str,
    recipients: list[str],
    extra_header: bytes,
    error: type[Exception],
    code: int,
) -> None:
    with pytest.raises(error) as caught:
        await smtp.send_raw(
            settings(smtp_server, test_ca, Security.STARTTLS),
            PasswordLogin(smtp_user.name, smtp_user.password),
            envelope_from=sender,
            recipients=recipients,
            message=extra_header + MESSAGE,
        )
    assert caught.value.reply.code == code  # type: ignore[attr-defined]
    assert smtp_server.received_by(smtp_user.name) == []


async def test_oversized_message_is_rejected_552(
    smtp_server: SmtpServer, test_ca: LocalCA, smtp_user: SmtpUser
) -> None:
    big = MESSAGE + b"x" * (smtp_server.data_size_limit + 10) + b"\r\n"
    with pytest.raises(smtp.SmtpRejected) as caught:
        await smtp.send_raw(
            settings(smtp_server, test_ca, Security.TLS),
            PasswordLogin(smtp_user.name, smtp_user.password),
            envelope_from="sender@example.com",
            recipients=["ok@example.org"],
            message=big,
        )
    assert caught.value.reply.code == 552


async def test_untrusted_certificate_and_plaintext_are_refused(
    smtp_server: SmtpServer, smtp_user: SmtpUser
) -> None:
    login = PasswordLogin(smtp_user.name, smtp_user.password)
    for security, port in (
        (Security.TLS, smtp_server.tls_port),
        (Security.STARTTLS, smtp_server.port),
    ):
        with pytest.raises(TLSError):
            await smtp.verify_login(
                smtp.SmtpSettings(Endpoint("localhost", port, security), allow_private_hosts=True),
                login,
            )
    with pytest.raises(PlaintextRefused):
        await smtp.verify_login(
            smtp.SmtpSettings(
                Endpoint("localhost", smtp_server.port, Security.PLAIN), allow_private_hosts=True
            ),
            login,
        )
