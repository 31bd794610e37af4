"""``mailish autoconfig``: JSON out for a built-in provider (no network is touched)."""

from __future__ import annotations

import argparse
import json

import pytest

from mailish.cli import autoconfig_command
from mailish.config import load_settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    autoconfig_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["autoconfig", *argv])


async def test_prints_settings_source_and_quirks(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("me@ya.ru")
    assert await args.handler(load_settings(), args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "provider" and out["provider"] == "yandex"
    assert out["imap"] == {"host": "imap.yandex.com", "port": 993, "security": "tls"}
    assert out["quirks"]["oauth_provider"] == "yandex" and out["trail"] == []
