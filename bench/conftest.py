"""Benchmark wiring: the test harness's Dovecot and CA, plus a PostgreSQL with fsync ON.

The test suite's PostgreSQL runs with fsync off on purpose (speed); a benchmark against it
would flatter mailish, so the benchmarks start their own durable server on the normal disk.
The same plugins as tests/conftest.py are loaded, but the servers here live in folders of
their own under /tmp (see ``bench_root``).
Knobs (environment): MAILISH_BENCH_MESSAGES (10000), MAILISH_BENCH_ROUNDS (3),
MAILISH_BENCH_DELIVERIES (100), MAILISH_BENCH_PROFILE=1 (one extra mailish round under
cProfile, written to bench/results/profile.txt).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from bench.harness import MBSYNC, DurablePostgres, knob, scratch_folder
from bench.report import Report, machine_line
from bench.rounds import Bench, tool_versions, warm_dovecot
from tests.harness.ca import LocalCA, make_ca
from tests.harness.dovecot import Dovecot, DovecotNotInstalledError

pytest_plugins = [
    "tests.harness.pg_fixtures",
    "tests.harness.mail_fixtures",
    "tests.harness.task_leaks",
]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def durable_pg() -> Iterator[DurablePostgres]:
    """The benchmark's PostgreSQL (fsync on), stopped and deleted at the end.

    PostgreSQL runs as a daemon, so nothing stops it if this process dies. While it runs,
    SIGTERM (``timeout``, CI cancelling a job) becomes KeyboardInterrupt, which pytest turns
    into an orderly teardown, instead of leaving a server and its folder behind.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    server = DurablePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def bench_root() -> Iterator[Path]:
    """Where the benchmark's Dovecot lives: NOT under pytest's /tmp/pytest-of-<user>.

    pytest re-chmods that folder to 0700 whenever any pytest session starts, so a test run
    started by someone else on the machine cuts Dovecot's mail processes (uid nobody) off
    from the mail mid-benchmark ("Permission denied ... missing +x perm: /tmp/pytest-of-root",
    then FETCH fails with BYE). A folder of our own under /tmp does not have that problem.
    """
    with scratch_folder("mailish-bench-") as root:
        root.chmod(0o755)
        yield root


@pytest.fixture(scope="session")
def bench_ca(bench_root: Path) -> LocalCA:
    return make_ca(bench_root / "ca")


@pytest.fixture(scope="session")
def bench_dovecot(bench_root: Path, bench_ca: LocalCA) -> Iterator[Dovecot]:
    try:
        server = Dovecot(bench_root / "dovecot", bench_ca)  # COMPRESS off (the default)
    except DovecotNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bench(bench_dovecot: Dovecot, bench_ca: LocalCA, durable_pg: DurablePostgres) -> Bench:
    dovecot = bench_dovecot
    if not os.path.isfile(MBSYNC):
        pytest.fail(f"{MBSYNC} not found: apt-get install -y isync", pytrace=False)
    assert not dovecot.compress, "the benchmark compares tools with COMPRESS off"
    messages = knob("MESSAGES", 10_000)
    user = dovecot.add_user()
    size = dovecot.load_maildir(user, messages, seed=1)
    warm_dovecot(dovecot, user)
    report = Report(environment=[machine_line(), *tool_versions(dovecot)])
    return Bench(
        dovecot=dovecot, ca=bench_ca, pg=durable_pg, user=user, messages=messages,
        mailbox_bytes=size, report=report,
    )  # fmt: skip
