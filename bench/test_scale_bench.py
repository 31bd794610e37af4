"""The scale benchmark under pytest: ``pytest bench -m slow -s -k scale``.

Same run as ``python -m bench.scale`` (see that module for what is measured and how); sizes
from ``MAILISH_BENCH_SCALE_ACCOUNTS`` (default 500,1000,2000), deliveries from
``MAILISH_BENCH_SCALE_DELIVERIES`` (200). The table is printed and written to
bench/results/scale_latest.txt. The targets are shown in the table, not asserted (the
machine is shared; see the load averages there); what is asserted is that the plumbing held:
every account online on its own connection and every delivery in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bench.harness import knob, scratch_folder
from bench.report import Report, machine_line
from bench.scale import SCALE_RESULTS, Knobs, benchmark


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_scale_accounts_online() -> None:
    sizes = [
        int(s) for s in os.environ.get("MAILISH_BENCH_SCALE_ACCOUNTS", "500,1000,2000").split(",")
    ]
    knobs = Knobs(deliveries=knob("SCALE_DELIVERIES", 200))
    report = Report(environment=[machine_line()], path=SCALE_RESULTS)
    with scratch_folder("mailish-scale-") as root:
        root.chmod(0o755)
        results = asyncio.run(benchmark(sizes, knobs, peer=True, report=report, root=root))
    assert [r.accounts for r in results] == sizes
    for result in results:
        assert result.connections == result.accounts
        assert result.missing == 0
        assert len(result.latencies_s) == knobs.deliveries
