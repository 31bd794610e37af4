"""The built-in table of big providers, checked before anything goes on the network.

Why a table when the ISPDB exists: these providers cover most users, their settings change
rarely, and their quirks (who files the Sent copy, connection limits, OAuth, app passwords)
are not in the ISPDB at all. ``mx_domains`` are matched only through the MX step, so a
Google Workspace or Microsoft 365 domain resolves to its real provider.

Quirks marked ``None`` are unknown, not "unlimited" or "no".
"""

from __future__ import annotations

from dataclasses import dataclass

from mailish.domain.endpoints import Endpoint, Security

TLS, STARTTLS = Security.TLS, Security.STARTTLS


@dataclass(frozen=True, slots=True)
class ProviderQuirks:
    saves_sent_copy: bool  # the provider files submitted mail in Sent itself; do not APPEND
    max_imap_connections: int | None
    oauth_provider: str | None  # google | microsoft | yahoo | mailru | yandex
    needs_app_password: bool  # the account password is refused for IMAP (2FA / policy)


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    domains: tuple[str, ...]  # exact domains; "hotmail.*" matches hotmail.<one or two labels>
    imap: Endpoint
    smtp: Endpoint
    quirks: ProviderQuirks
    mx_domains: tuple[str, ...] = ()
    username: str = "%EMAILADDRESS%"


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "gmail", ("gmail.com", "googlemail.com"),
        Endpoint("imap.gmail.com", 993, TLS), Endpoint("smtp.gmail.com", 465, TLS),
        ProviderQuirks(True, 15, "google", True), mx_domains=("google.com", "googlemail.com"),
    ),
    Provider(
        "outlook", ("outlook.*", "hotmail.*", "live.*", "msn.com", "windowslive.com"),
        Endpoint("outlook.office365.com", 993, TLS), Endpoint("smtp.office365.com", 587, STARTTLS),
        ProviderQuirks(True, 16, "microsoft", True), mx_domains=("outlook.com",),
    ),
    Provider(
        "yahoo", ("yahoo.*", "ymail.com", "rocketmail.com"),
        Endpoint("imap.mail.yahoo.com", 993, TLS), Endpoint("smtp.mail.yahoo.com", 465, TLS),
        ProviderQuirks(True, 5, "yahoo", True), mx_domains=("yahoodns.net",),
    ),
    Provider(
        "icloud", ("icloud.com", "me.com", "mac.com"),
        Endpoint("imap.mail.me.com", 993, TLS), Endpoint("smtp.mail.me.com", 587, STARTTLS),
        ProviderQuirks(False, None, None, True), mx_domains=("icloud.com",),
    ),
    Provider(
        "aol", ("aol.com", "aim.com"),
        Endpoint("imap.aol.com", 993, TLS), Endpoint("smtp.aol.com", 465, TLS),
        ProviderQuirks(True, None, None, True),
    ),
    Provider(
        "yandex", ("yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz", "yandex.ua"),
        Endpoint("imap.yandex.com", 993, TLS), Endpoint("smtp.yandex.com", 465, TLS),
        ProviderQuirks(False, None, "yandex", True), mx_domains=("yandex.net",),
    ),
    Provider(
        "mailru", ("mail.ru", "inbox.ru", "list.ru", "bk.ru", "internet.ru", "mail.ua"),
        Endpoint("imap.mail.ru", 993, TLS), Endpoint("smtp.mail.ru", 465, TLS),
        ProviderQuirks(True, None, "mailru", True),
    ),
    Provider(
        "gmx", ("gmx.de", "gmx.net", "gmx.at", "gmx.ch"),
        Endpoint("imap.gmx.net", 993, TLS), Endpoint("mail.gmx.net", 465, TLS),
        ProviderQuirks(False, None, None, False),
    ),
    Provider(
        "gmx.com", ("gmx.com", "gmx.us", "gmx.co.uk", "gmx.fr"),
        Endpoint("imap.gmx.com", 993, TLS), Endpoint("mail.gmx.com", 465, TLS),
        ProviderQuirks(False, None, None, False),
    ),
    Provider(
        "zoho", ("zoho.com", "zohomail.com"),
        Endpoint("imap.zoho.com", 993, TLS), Endpoint("smtp.zoho.com", 465, TLS),
        ProviderQuirks(False, None, None, True), mx_domains=("zoho.com",),
    ),
    Provider(
        "fastmail", ("fastmail.com", "fastmail.fm", "fastmail.net", "fastmail.org",
                     "messagingengine.com"),
        Endpoint("imap.fastmail.com", 993, TLS), Endpoint("smtp.fastmail.com", 465, TLS),
        ProviderQuirks(False, None, None, True), mx_domains=("messagingengine.com",),
    ),
)  # fmt: skip


def _matches(pattern: str, domain: str) -> bool:
    if not pattern.endswith(".*"):
        return pattern == domain
    stem = pattern[:-1]  # "hotmail."
    rest = domain.removeprefix(stem)
    return rest != domain and 1 <= len(rest.split(".")) <= 2 and all(rest.split("."))


def by_domain(domain: str) -> Provider | None:
    """The provider hosting addresses ``@domain``, if it is one we know."""
    domain = domain.lower().rstrip(".")
    return next((p for p in PROVIDERS if any(_matches(d, domain) for d in p.domains)), None)


def by_mx_domain(domain: str) -> Provider | None:
    """The provider whose MX hosts live under ``domain`` (e.g. ``google.com``)."""
    domain = domain.lower().rstrip(".")
    return next((p for p in PROVIDERS if domain in p.mx_domains), None) or by_domain(domain)


_TWO_LABEL_SUFFIXES = frozenset(
    {"co.uk", "org.uk", "ac.uk", "com.au", "net.au", "co.jp", "co.nz", "com.br", "com.tr",
     "co.za", "com.ua", "com.ru", "com.cn", "co.in", "co.kr", "com.mx", "com.ar"}
)  # fmt: skip


def registrable_domain(host: str) -> str:
    """``aspmx.l.google.com`` -> ``google.com``; a small suffix list, not the full PSL.

    Good enough for the MX step: the result is only a key for the table and the ISPDB, so a
    wrong guess costs a miss, never a wrong connection.
    """
    labels = host.lower().rstrip(".").split(".")
    keep = 3 if ".".join(labels[-2:]) in _TWO_LABEL_SUFFIXES else 2
    return ".".join(labels[-keep:])
