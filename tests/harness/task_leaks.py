"""Fail any async test that leaves asyncio tasks running.

Why: every test shares one session-scoped event loop (``asyncio_default_test_loop_scope =
"session"``), so a background task a test forgets to cancel keeps running during later tests and
makes them fail far from the cause. The check snapshots the loop's tasks when the test starts and
compares when it ends, after every function-scoped fixture has been torn down (so tasks that a
fixture cancels in its teardown are fine), and after giving stragglers a brief moment to finish
(``task_leak_grace`` ini option, default 1 s; a clean test never waits). Leaked tasks are
cancelled, so they cannot disturb the following tests.

Opt out for one test with ``@pytest.mark.allow_task_leaks``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable, Iterator

import pytest
from pytest_asyncio import is_async_test

LEAK_GRACE_SECONDS = 1.0
GRACE_INI = "task_leak_grace"
MARKER = "allow_task_leaks"
_warned = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        GRACE_INI,
        "seconds an async test's leftover tasks get to finish before they count as leaked",
        default=str(LEAK_GRACE_SECONDS),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: do not fail this async test for asyncio tasks it leaves running"
    )


def pending_tasks(
    loop: asyncio.AbstractEventLoop, before: Iterable[asyncio.Task[object]]
) -> list[asyncio.Task[object]]:
    """Tasks of ``loop`` that are not done and were not in ``before``."""
    known = set(before)
    return [t for t in asyncio.all_tasks(loop) if t not in known and not t.done()]


def find_leaked_tasks(
    loop: asyncio.AbstractEventLoop,
    before: Iterable[asyncio.Task[object]],
    grace: float = LEAK_GRACE_SECONDS,
) -> list[asyncio.Task[object]]:
    """New tasks still pending after running ``loop`` for up to ``grace`` seconds.

    ``loop`` must not be running (call it between tests, as the fixture does). Tasks that are
    just finishing (a connection closing, a cancelled task unwinding) get the grace period.
    """
    known = set(before)
    if not pending_tasks(loop, known) or grace <= 0:
        return pending_tasks(loop, known)

    async def settle() -> None:
        me = asyncio.current_task()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            if not [t for t in pending_tasks(loop, known) if t is not me]:
                return
            await asyncio.sleep(0.01)

    loop.run_until_complete(settle())
    return pending_tasks(loop, known)


def describe_tasks(tasks: Iterable[asyncio.Task[object]]) -> str:
    """One line per task: name, coroutine and where it is suspended."""
    lines = []
    for task in tasks:
        coro = task.get_coro()
        qualname = getattr(coro, "__qualname__", repr(coro))
        where = ""
        stack = task.get_stack(limit=1)
        if stack:
            code = stack[0].f_code
            where = f" at {code.co_filename}:{stack[0].f_lineno}"
        lines.append(f"  - {task.get_name()}: {qualname}(){where}")
    return "\n".join(lines)


def cancel_tasks(
    loop: asyncio.AbstractEventLoop, tasks: Iterable[asyncio.Task[object]], timeout: float = 2.0
) -> None:
    """Cancel ``tasks`` and let them unwind, so they cannot disturb the following tests."""
    tasks = [t for t in tasks if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
    for task in tasks:  # retrieve results so asyncio does not log "exception never retrieved"
        if task.done() and not task.cancelled():
            task.exception()


def _test_loop(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoop | None:
    """The loop pytest-asyncio will run this test in.

    pytest-asyncio 1.x keeps one ``asyncio.Runner`` per loop scope in a fixture named
    ``_<scope>_scoped_runner``; there is no public accessor. If that changes, the check turns
    itself off with one warning instead of breaking every test.
    """
    global _warned
    try:
        scope = request.node._loop_scope
        runner = request.getfixturevalue(f"_{scope}_scoped_runner")
        loop: asyncio.AbstractEventLoop = runner.get_loop()
    except Exception as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"task leak check disabled, cannot find pytest-asyncio's loop: {exc!r}",
                pytest.PytestWarning,
                stacklevel=1,
            )
        return None
    return loop


@pytest.fixture(autouse=True)
def _fail_on_leaked_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Autouse: no-op for sync tests; for async tests, fail if new tasks outlive the test."""
    item = request.node
    if not is_async_test(item) or item.get_closest_marker(MARKER) is not None:
        yield
        return
    loop = _test_loop(request)
    if loop is None:
        yield
        return
    before = set(asyncio.all_tasks(loop))
    yield
    if loop.is_closed() or loop.is_running():
        return
    grace = float(request.config.getini(GRACE_INI))
    leaked = find_leaked_tasks(loop, before, grace)
    if leaked:
        report = describe_tasks(leaked)
        cancel_tasks(loop, leaked)
        pytest.fail(
            f"{item.nodeid} left {len(leaked)} asyncio task(s) running "
            f"(cancel them, or await them, before the test ends):\n{report}",
            pytrace=False,
        )
