"""``mailish keys new``: print a fresh credential key for MAILISH_SECRET_KEYS."""

from __future__ import annotations

import argparse
import datetime as dt

from mailish.cli import keys_rotate
from mailish.config import Settings
from mailish.mail.credentials import format_key, new_key


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="manage credential encryption keys")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    new = verbs.add_parser(
        "new",
        help="print a new key as id:base64",
        description="Print a new random 256-bit key as 'id:base64'. Put it first in "
        "MAILISH_SECRET_KEYS (comma-separated; the first key encrypts, all decrypt).",
    )
    new.add_argument("--id", default=None, help="key id (default: k<UTC date and time>)")
    new.set_defaults(handler=new_key_command)
    keys_rotate.add_parser(verbs)


async def new_key_command(_settings: Settings, args: argparse.Namespace) -> int:
    kid = args.id or "k" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    print(format_key(kid, new_key()))
    return 0
