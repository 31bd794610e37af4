"""A small supervisor: long-lived tasks that log a crash at once and restart with backoff.

Every retry loop is bounded in pace (exponential backoff with full jitter, capped) so a
crashing task can never spin; ``Fenced`` is not a crash but an order to stop, so it ends the
task without a restart. Cancellation propagates untouched.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailish.domain.errors import Fenced, TransientError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        return (rng or random).uniform(0, ceiling)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff = Backoff(),
    healthy_after: float = 60.0,
) -> None:
    """Run ``run()`` until it returns; restart it after crashes. Returns on ``Fenced``."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Fenced as exc:
            log.warning("%s stopped: %s", name, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task root: every crash is logged and retried
            if loop.time() - started >= healthy_after:
                attempt = 0
            hinted = exc.delay if isinstance(exc, TransientError) else 0.0
            delay = max(hinted, backoff.delay(attempt))
            log.error(
                "%s crashed (%s: %s); restarting in %.1fs",
                name,
                type(exc).__name__,
                exc,
                delay,
                exc_info=not isinstance(exc, TransientError),
            )
            attempt += 1
            await asyncio.sleep(delay)
