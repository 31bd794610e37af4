"""Running several long-lived jobs in one process, and stopping them in an orderly way.

On SIGINT/SIGTERM every job is asked to stop (gracefully where it knows how, e.g. uvicorn
drains connections and runs the lifespan shutdown; otherwise by cancellation), then given a
grace period. If a job crashes or returns on its own, the others are stopped the same way and
its error is re-raised, so the process never limps on with half of its parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from mailish.domain.errors import MailishError

log = logging.getLogger(__name__)
GRACE_SECONDS = 15.0


class JobExited(MailishError):
    pass


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None] | None = None


@contextlib.asynccontextmanager
async def stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by the first SIGINT or SIGTERM; handlers are removed afterwards."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(job: Job) -> None:
    await job.run()


async def run_jobs(stop: asyncio.Event, jobs: list[Job], *, grace: float = GRACE_SECONDS) -> None:
    tasks = {asyncio.create_task(_run(job), name=job.name): job for job in jobs}
    signalled = asyncio.create_task(stop.wait(), name="signals")
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait([*tasks, signalled], return_when=asyncio.FIRST_COMPLETED)
        if signalled in done:
            log.info("stopping on signal")
        for task in done:
            job = tasks.get(task)  # type: ignore[arg-type]
            if job is not None:
                failure = task.exception() or JobExited(f"{job.name} exited unexpectedly")
                log.error("%s ended (%s); stopping the others", job.name, failure)
                break
    finally:
        signalled.cancel()
        for task, job in tasks.items():
            if not task.done():
                if job.stop is not None:
                    job.stop()
                else:
                    task.cancel()
        finished, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
        for task in pending:
            log.warning("%s did not stop within %.0fs; cancelling", tasks[task].name, grace)
            task.cancel()
        await asyncio.gather(*pending, signalled, return_exceptions=True)
        for task in finished:
            if not task.cancelled() and task.exception() and failure is None:
                failure = task.exception()
    if failure is not None:
        raise failure
