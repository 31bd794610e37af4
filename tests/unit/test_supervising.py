"""The supervisor restarts crashes with bounded backoff and stops on Fenced."""

from __future__ import annotations

import random

from mailish.domain.errors import Fenced
from mailish.worker.supervising import Backoff, supervise


async def test_restarts_after_crashes_then_returns() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise RuntimeError("boom")

    await supervise("flaky", flaky, backoff=Backoff(initial=0.001, maximum=0.01))
    assert calls == 4


async def test_fenced_stops_without_restart() -> None:
    calls = 0

    async def fenced() -> None:
        nonlocal calls
        calls += 1
        raise Fenced(1, 1, 2)

    await supervise("fenced", fenced, backoff=Backoff(initial=0.001))
    assert calls == 1


def test_backoff_is_bounded_and_jittered() -> None:
    backoff = Backoff(initial=0.5, maximum=60)
    rng = random.Random(7)
    delays = [backoff.delay(attempt, rng) for attempt in range(50)]
    assert all(0 <= d <= 60 for d in delays)
    assert len(set(delays)) > 40
    assert max(backoff.delay(0, random.Random(i)) for i in range(100)) <= 0.5
