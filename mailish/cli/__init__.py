"""The ``mailish`` command. Builds the settings once, configures logging, and dispatches.

Every expected failure (bad configuration, unreachable database, missing binaries) ends in
one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mailish import __version__
from mailish.cli import accounts, autoconfig_command, commands, keys_command
from mailish.config import Settings, load_settings
from mailish.domain.errors import ConfigError, MailishError
from mailish.observability import logs

EXIT_CONFIG = 2
EXIT_FAILURE = 1

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailish",
        description="External IMAP/SMTP mailboxes behind one mobile mail API. Settings come "
        "from MAILISH_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"mailish {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run api, worker and a local assigner in one process",
        description="Run the api, a worker and a static assigner that owns every bucket, in one "
        "process. Without MAILISH_DATABASE_URL it starts a private PostgreSQL in "
        "MAILISH_DATA_DIR (default ./.mailish) and stops it on exit. Ctrl-C or SIGTERM stops "
        "everything cleanly.",
    )
    up.set_defaults(handler=commands.up)

    api = sub.add_parser(
        "api",
        help="run the mobile API server",
        description="Serve the mobile API on MAILISH_API_HOST:MAILISH_API_PORT. Needs "
        "MAILISH_DATABASE_URL.",
    )
    api.set_defaults(handler=commands.api)

    worker = sub.add_parser(
        "worker",
        help="run a sync worker",
        description="Run a worker that claims buckets and syncs their accounts. It owns every "
        "bucket at a fresh epoch (static assignment), fencing any older worker on the same "
        "database. Needs MAILISH_DATABASE_URL.",
    )
    worker.set_defaults(handler=commands.worker)

    operator = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (kopf)",
        description="Run the kopf operator that assigns MailishBucket objects to worker pods.",
    )
    operator.add_argument("--namespace", default=None, help="namespace to watch (default: all)")
    operator.set_defaults(handler=commands.operator)

    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations",
        description="Apply pending schema migrations (safe to run concurrently and repeatedly). "
        "Without MAILISH_DATABASE_URL it migrates the embedded database.",
    )
    migrate.set_defaults(handler=commands.migrate)
    accounts.add_parser(sub)
    keys_command.add_parser(sub)
    autoconfig_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"mailish: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(settings, args))
    except ConfigError as exc:
        print(f"mailish: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MailishError as exc:
        print(f"mailish: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
