"""The built-in provider table: aliases, MX domains, quirks."""

from __future__ import annotations

import pytest

from mailish.domain.endpoints import Security
from mailish.mail.autoconfig import providers


@pytest.mark.parametrize(
    ("domain", "name"),
    [
        ("gmail.com", "gmail"), ("googlemail.com", "gmail"), ("GMAIL.COM.", "gmail"),
        ("outlook.com", "outlook"), ("hotmail.com", "outlook"), ("hotmail.co.uk", "outlook"),
        ("live.fr", "outlook"), ("msn.com", "outlook"),
        ("yahoo.com", "yahoo"), ("yahoo.co.jp", "yahoo"), ("ymail.com", "yahoo"),
        ("icloud.com", "icloud"), ("me.com", "icloud"), ("mac.com", "icloud"),
        ("aol.com", "aol"),
        ("yandex.ru", "yandex"), ("ya.ru", "yandex"),
        ("mail.ru", "mailru"), ("inbox.ru", "mailru"), ("list.ru", "mailru"), ("bk.ru", "mailru"),
        ("gmx.de", "gmx"), ("gmx.net", "gmx"), ("gmx.com", "gmx.com"),
        ("zoho.com", "zoho"), ("zohomail.com", "zoho"),
        ("fastmail.com", "fastmail"), ("fastmail.fm", "fastmail"),
    ],
)  # fmt: skip
def test_known_domains(domain: str, name: str) -> None:
    provider = providers.by_domain(domain)
    assert provider is not None and provider.name == name


@pytest.mark.parametrize(
    "domain", ["example.com", "notgmail.com", "gmail.com.evil.test", "hotmail.a.b.c", "hotmail"]
)
def test_unknown_domains(domain: str) -> None:
    assert providers.by_domain(domain) is None


@pytest.mark.parametrize(
    ("mx_host", "name"),
    [
        ("aspmx.l.google.com", "gmail"),
        ("example-com.mail.protection.outlook.com", "outlook"),
        ("mta5.am0.yahoodns.net", "yahoo"),
        ("mx01.mail.icloud.com", "icloud"),
        ("mx.yandex.net", "yandex"),
        ("mxs.mail.ru", "mailru"),
        ("in1-smtp.messagingengine.com", "fastmail"),
        ("mx.zoho.com", "zoho"),
    ],
)
def test_mx_hosts_lead_to_providers(mx_host: str, name: str) -> None:
    provider = providers.by_mx_domain(providers.registrable_domain(mx_host))
    assert provider is not None and provider.name == name


@pytest.mark.parametrize(
    ("host", "domain"),
    [("aspmx.l.google.com.", "google.com"), ("mx.example.co.uk", "example.co.uk"), ("a.b", "a.b")],
)
def test_registrable_domain(host: str, domain: str) -> None:
    assert providers.registrable_domain(host) == domain


def test_every_entry_is_secure_and_quirks_are_named() -> None:
    oauth = {"google", "microsoft", "yahoo", "mailru", "yandex", None}
    for provider in providers.PROVIDERS:
        assert provider.imap.security is Security.TLS
        assert provider.smtp.security in (Security.TLS, Security.STARTTLS)
        assert provider.quirks.oauth_provider in oauth
    gmail = providers.by_domain("gmail.com")
    assert gmail is not None
    assert gmail.quirks == providers.ProviderQuirks(True, 15, "google", True)
