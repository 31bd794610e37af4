"""``mailish accounts add|list|status``: link and inspect accounts from the shell."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from typing import Any

from mailish.cli.database import database, migrate_to_latest
from mailish.cli.keys import keyring
from mailish.config import Settings
from mailish.domain.endpoints import Endpoint, Security, normalise_host
from mailish.domain.errors import ConfigError
from mailish.mail.autoconfig.discovering import DiscoveryFailed, discover
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkError, LinkRequest, link
from mailish.store import accounts, connecting


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("accounts", help="link and inspect accounts")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser(
        "add",
        help="verify a login and link the account",
        description="Verify the IMAP (and SMTP) login, then link the account and print JSON "
        "with account_id and an API token. Servers not given are discovered from the address "
        "as the API does (see `mailish autoconfig`). Nothing is created on failure.",
    )
    add.add_argument("email")
    add.add_argument("--username", help="login name, when it is not the address")
    add.add_argument("--display-name")
    for proto, port in (("imap", 993), ("smtp", 465)):
        add.add_argument(f"--{proto}-host", help="default: discovered from the address")
        add.add_argument(f"--{proto}-port", type=int, default=port)
        add.add_argument(f"--{proto}-security", choices=[s.value for s in Security], default="tls")
    add.add_argument(
        "--password-stdin", action="store_true", required=True,
        help="read the password from standard input (never from the command line)",
    )  # fmt: skip
    add.set_defaults(handler=add_account)
    listing = verbs.add_parser("list", help="list linked accounts as JSON lines")
    listing.set_defaults(handler=list_accounts)
    status = verbs.add_parser("status", help="print an account's sync progress as JSON")
    status.add_argument("email")
    status.set_defaults(handler=account_status)


def _endpoint(args: argparse.Namespace, proto: str) -> Endpoint | None:
    host = getattr(args, f"{proto}_host")
    if host is None:
        return None
    try:
        return Endpoint(
            normalise_host(host), getattr(args, f"{proto}_port"),
            Security(getattr(args, f"{proto}_security")),
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"--{proto}-*: {exc}") from None


@dataclass(frozen=True, slots=True)
class Servers:
    imap: Endpoint
    smtp: Endpoint | None
    username: str | None
    source: str  # "arguments", or the discovery source that answered


async def _servers(settings: Settings, args: argparse.Namespace) -> Servers:
    """The servers from the arguments; what they leave out is discovered from the address."""
    imap, smtp = _endpoint(args, "imap"), _endpoint(args, "smtp")
    if imap is not None:
        return Servers(imap, smtp, args.username, "arguments")
    try:
        found = await discover(
            args.email,
            policy=ConnectionPolicy.from_settings(settings),
            ispdb_base=settings.ispdb_url,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Servers(found.imap, smtp or found.smtp, args.username or found.username, found.source)


def _json(value: Any) -> str:
    def default(item: object) -> str:
        if isinstance(item, dt.datetime):
            return item.isoformat()
        return str(item)

    return json.dumps(value, default=default, ensure_ascii=False)


async def add_account(settings: Settings, args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError("no password on standard input")
    try:
        servers = await _servers(settings, args)
    except DiscoveryFailed as exc:
        trail = "; ".join(exc.trail)
        print(f"mailish: discovery_failed: no IMAP/SMTP settings found: {trail}", file=sys.stderr)
        return 1
    request = LinkRequest(
        email=args.email, password=password, imap=servers.imap, smtp=servers.smtp,
        display_name=args.display_name, username=servers.username,
    )  # fmt: skip
    local = settings.database_dsn() is None
    async with database(settings) as dsn:
        await migrate_to_latest(dsn, settings)
        pool = await connecting.connect_pool(dsn, min_size=1, max_size=2)
        try:
            linked = await link(
                pool, request, keyring=keyring(settings, local=local),
                policy=ConnectionPolicy.from_settings(settings), buckets=settings.buckets,
            )  # fmt: skip
        except LinkError as exc:
            print(f"mailish: {exc.code}: {exc.detail}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
    print(_json({
        "account_id": linked.account_id, "token": linked.token, "bucket": linked.bucket,
        "imap": servers.imap.as_json(), "smtp": servers.smtp.as_json() if servers.smtp else None,
        "source": servers.source,
    }))  # fmt: skip
    return 0


async def list_accounts(settings: Settings, _args: argparse.Namespace) -> int:
    async with database(settings) as dsn:
        conn = await connecting.connect(dsn)
        try:
            for row in await accounts.list_all(conn):
                print(_json(row))
        finally:
            await conn.close()
    return 0


async def account_status(settings: Settings, args: argparse.Namespace) -> int:
    async with database(settings) as dsn:
        conn = await connecting.connect(dsn)
        try:
            row = await accounts.status_by_email(conn, email=args.email)
        finally:
            await conn.close()
    if row is None:
        print(f"mailish: no account {args.email}", file=sys.stderr)
        return 1
    print(_json(row))
    return 0
