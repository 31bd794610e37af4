"""``mailish autoconfig EMAIL``: show what discovery finds for an address, and why.

Prints one JSON object: the IMAP/SMTP settings, the source that answered, provider quirks
and the trail of sources that missed. On failure it prints ``{"error", "trail"}`` and exits 1,
so support can paste the output as it is.
"""

from __future__ import annotations

import argparse
import json
import sys

from mailish.config import Settings
from mailish.domain.errors import ConfigError
from mailish.mail.autoconfig.discovering import ISPDB_BASE, DiscoveryFailed, discover
from mailish.mail.autoconfig.resolving import Resolver
from mailish.mail.policy import ConnectionPolicy


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "autoconfig",
        help="discover IMAP/SMTP settings for an address",
        description="Look the address up in the built-in provider table, the ISPDB, the "
        "domain's autoconfig files, DNS SRV and MX records, then guesses, and print the "
        "settings found with the trail of what was tried, as JSON.",
    )
    parser.add_argument("email")
    parser.add_argument("--ispdb-url", help=f"ISPDB base URL (default {ISPDB_BASE})")
    parser.add_argument(
        "--nameserver", action="append", help="DNS server to ask (repeatable; default: system)"
    )
    parser.set_defaults(handler=autoconfig)


async def autoconfig(settings: Settings, args: argparse.Namespace) -> int:
    # getattr: MAILISH_ISPDB_URL is read once the setting exists; until then the default.
    base = args.ispdb_url or getattr(settings, "ispdb_url", None) or ISPDB_BASE
    if not base.startswith("https://") or not base.endswith("/"):
        raise ConfigError(f"ISPDB URL must be https and end with '/': {base!r}")
    try:
        found = await discover(
            args.email, policy=ConnectionPolicy.from_settings(settings),
            resolver=Resolver(args.nameserver), ispdb_base=base,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except DiscoveryFailed as exc:
        print(json.dumps({"error": "not_found", "trail": list(exc.trail)}, ensure_ascii=False))
        return 1
    print(json.dumps(found.as_json(), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run as: mailish autoconfig EMAIL")
