"""Numbered crash points: places where a test can make the worker die like a power cut.

``crash_point(name)`` is a no-op (one global read) unless a test armed that point; when the
armed point is reached for the n-th time, the process SIGKILLs itself: no ``finally``, no
rollback, no goodbye to IMAP, SMTP or PostgreSQL. ``tests/e2e/test_crash_points.py`` kills a
real ``mailish worker`` at every point in ``POINTS``, restarts it, and checks that the mailbox
converges to the state of an uninterrupted run and that no mail went out twice.

Arming needs two environment variables, read once by ``mailish worker`` at start-up:
``MAILISH_TEST_CRASH_AT=<point>[:<n-th hit>]`` and ``MAILISH_TEST_CRASH_ENABLE=1``. Either one
alone, or both inside a Kubernetes pod (``POD_NAME`` set), arms nothing and logs a warning,
so a stray variable in production can never make workers kill themselves. An unknown point
name is a configuration error, so a typo in a test cannot silently test nothing.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import Final

from mailish.domain.errors import ConfigError

log = logging.getLogger(__name__)
CRASH_AT: Final = "MAILISH_TEST_CRASH_AT"
CRASH_ENABLE: Final = "MAILISH_TEST_CRASH_ENABLE"

#: Every crash point, in the order a worker's round meets them (the number is the position).
POINTS: Final[dict[str, str]] = {
    "sync.listed": "after LIST, before the folder list is mirrored",
    "sync.mirrored": "after the mirrored folder list is committed",
    "sync.selected": "after SELECT, before the local state is read",
    "sync.fetched": "after a FETCH batch, before it is committed",
    "sync.stored": "after a batch and its checkpoint are committed",
    "sync.flags_applied": "after changed flags are committed",
    "sync.expunged": "after expunged messages are committed",
    "sync.remap_fetched": "UIDVALIDITY changed: after reading the headers, before the remap",
    "sync.remapped": "after the remap is committed, before the folder is fetched again",
    "sync.saved": "after a folder pass's final checkpoint is committed",
    "ops.claimed": "after an operation is marked running",
    "ops.moved": "after MOVE on the server, before the new UID is recorded",
    "ops.expunge_flagged": "after STORE \\Deleted, before EXPUNGE",
    "ops.applied": "after an operation's IMAP commands, before it is marked done",
    "ops.done": "after an operation is marked done",
    "send.claimed": "after an outbox row is claimed, before SMTP",
    "send.in_doubt": "after the row is marked in doubt, before DATA",
    "send.accepted": "after the server accepted DATA, before anything is recorded",
    "send.filed": "after the Sent copy is appended, before the send is recorded",
    "send.recorded": "after the send is recorded as sent",
}

_armed: tuple[str, int] | None = None
_hits = 0


def crash_point(name: str) -> None:
    """Die here, at once, if a test armed this point and this is its n-th hit."""
    global _hits
    if _armed is None or _armed[0] != name:
        return
    _hits += 1
    if _hits >= _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def parse(spec: str) -> tuple[str, int]:
    """``name`` or ``name:n`` → (name, n); raises ConfigError for unknown names or bad n."""
    name, _, nth = spec.strip().partition(":")
    if name not in POINTS:
        raise ConfigError(f"invalid setting {CRASH_AT}: unknown crash point {name!r}")
    if nth and (not nth.isdigit() or int(nth) < 1):
        raise ConfigError(f"invalid setting {CRASH_AT}: hit count must be a positive integer")
    return name, int(nth or 1)


def arm_from_environment(environ: Mapping[str, str]) -> str | None:
    """Arm the crash point the environment names (see the module docstring); returns it."""
    global _armed, _hits
    spec = environ.get(CRASH_AT, "")
    enabled = environ.get(CRASH_ENABLE, "") == "1"
    if not spec and not enabled:
        return None
    if not spec or not enabled or environ.get("POD_NAME"):
        log.warning(
            "crash points stay disarmed: they need both %s and %s=1, outside Kubernetes",
            CRASH_AT, CRASH_ENABLE,
        )  # fmt: skip
        return None
    _armed, _hits = parse(spec), 0
    log.warning("TEST ONLY: this process kills itself at crash point %s", spec)
    return _armed[0]


def disarm() -> None:
    global _armed, _hits
    _armed, _hits = None, 0
