"""JSON logs carry bound context and never secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from mailish.domain.logins import OAuth2Login, PasswordLogin
from mailish.observability import logs


def capture() -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level="DEBUG", fmt="json", stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_bound_context() -> None:
    stream = capture()
    log = logging.getLogger("mailish.test")
    with logs.bind(account_id="acc-1", bucket=3):
        log.info("synced %d messages", 5, extra={"folder": "INBOX"})
        with logs.bind(phase="initial"):
            log.warning("slow")
    log.info("outside")
    first, second, third = records(stream)
    assert first["msg"] == "synced 5 messages"
    assert first["account_id"] == "acc-1" and first["bucket"] == 3 and first["folder"] == "INBOX"
    assert second["phase"] == "initial" and second["level"] == "WARNING"
    assert "account_id" not in third


async def test_context_follows_tasks() -> None:
    stream = capture()
    log = logging.getLogger("mailish.test")

    async def child() -> None:
        log.info("in child")

    with logs.bind(account_id="acc-2"):
        await asyncio.create_task(child())
    assert records(stream)[0]["account_id"] == "acc-2"


def test_secrets_are_redacted_and_absent_from_reprs() -> None:
    stream = capture()
    log = logging.getLogger("mailish.test")
    log.info("login", extra={"password": "hunter2", "token": "tok-123"})
    text = stream.getvalue()
    assert "hunter2" not in text and "tok-123" not in text
    assert "hunter2" not in repr(PasswordLogin("u", "hunter2"))
    assert "tok-123" not in repr(OAuth2Login("u", "tok-123"))


def test_exceptions_are_one_json_record() -> None:
    stream = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("mailish.test").exception("failed")
    [record] = records(stream)
    assert "ValueError: boom" in str(record["exc"])
