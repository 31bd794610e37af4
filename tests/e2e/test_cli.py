"""The ``mailish`` command as a user runs it: real processes, real PostgreSQL, real HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailish.store.migrating import bundled_migrations

MAILISH = [sys.executable, "-m", "mailish"]
FIVE_METRICS = ("send_errors", "store_errors", "missing_users", "shards_in_sync", "user_operations")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILISH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mailish: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # PostgreSQL runs as another user when we are root: the folder must be reachable.
    path = Path(tempfile.mkdtemp(prefix="mailish-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UpProcess:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        env = clean_env(
            MAILISH_DATA_DIR=str(data_dir / ".mailish"),
            MAILISH_API_PORT=str(self.port),
            MAILISH_LOG_FORMAT="json",
        )
        self.proc = subprocess.Popen(
            [*MAILISH, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("mailish up did not become healthy in time")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def test_up_serves_health_and_metrics_then_stops_cleanly_and_reuses_data(data_dir: Path) -> None:
    first = UpProcess(data_dir)
    try:
        took = first.wait_healthy()
        assert took < 30
        assert httpx.get(f"{first.base}/readyz").status_code == 200
        exposition = httpx.get(f"{first.base}/metrics").text
        for name in FIVE_METRICS:
            assert f"# TYPE {name}" in exposition, name
        code, err = first.stop(signal.SIGTERM)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert code == 0, err
    assert "Traceback" not in err
    assert "creating a PostgreSQL cluster" in err
    assert "at epoch 1" in err
    pgdata = data_dir / ".mailish" / "pg" / "data"
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL left running"

    second = UpProcess(data_dir)
    try:
        second.wait_healthy()
        code, err = second.stop(signal.SIGINT)
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
    assert code == 0, err
    assert "creating a PostgreSQL cluster" not in err
    assert "at epoch 2" in err  # the claims of the first run are still in the database


def test_nonsense_database_url_is_one_line() -> None:
    result = run("up", env=clean_env(MAILISH_DATABASE_URL="nonsense"))
    assert result.returncode == 2
    assert_one_line_error(result, "MAILISH_DATABASE_URL")


def test_unreachable_database_is_one_line() -> None:
    env = clean_env(
        MAILISH_DATABASE_URL=f"postgresql://nobody:secretpw@127.0.0.1:{free_port()}/x",
        MAILISH_DB_CONNECT_TIMEOUT="1",
    )
    result = run("up", env=env)
    assert_one_line_error(result, "cannot connect")
    assert "secretpw" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILISH_API_PORT", "70000"),
        ("MAILISH_BUCKETS", "0"),
        ("MAILISH_LOG_LEVEL", "LOUD"),
        ("MAILISH_TLS_CA_FILE", "/no/such/ca.pem"),
        ("MAILISH_ALLOW_PLAINTEXT", "perhaps"),
    ],
)
def test_bad_settings_fail_before_anything_runs(variable: str, value: str) -> None:
    result = run("up", env=clean_env(**{variable: value}))
    assert result.returncode == 2
    assert_one_line_error(result, variable)


def test_missing_postgres_binaries_name_the_fix(data_dir: Path) -> None:
    env = clean_env(MAILISH_PG_BIN_DIR=str(data_dir / "nothing"), MAILISH_DATA_DIR=str(data_dir))
    result = run("up", env=env)
    assert_one_line_error(result, "apt-get install postgresql", "MAILISH_DATABASE_URL")


async def test_port_in_use_is_one_line(db_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(
            MAILISH_API_PORT=str(port),
            MAILISH_DATABASE_URL=db_dsn,
            MAILISH_SECRET_KEYS=run("keys", "new", env=clean_env()).stdout.strip(),
        )
        result = run("api", env=env)
    assert_one_line_error(result, "MAILISH_API_PORT")


def test_api_and_worker_refuse_bad_setups_in_one_line(empty_db_dsn: str) -> None:
    keys = run("keys", "new", env=clean_env()).stdout.strip()
    for command in ("api", "worker"):
        result = run(command, env=clean_env(MAILISH_DATABASE_URL=empty_db_dsn))
        assert_one_line_error(result, "MAILISH_SECRET_KEYS", "mailish keys new")
        unmigrated = clean_env(MAILISH_DATABASE_URL=empty_db_dsn, MAILISH_SECRET_KEYS=keys)
        assert_one_line_error(run(command, env=unmigrated), "mailish migrate")


def test_keys_new_prints_a_usable_key() -> None:
    from mailish.mail.credentials import KeyRing

    line = run("keys", "new", "--id", "k1", env=clean_env()).stdout.strip()
    ring = KeyRing.parse(line)
    assert ring.primary == "k1"
    assert len(ring.keys["k1"]) == 32


@pytest.mark.parametrize(
    "command", ["up", "api", "worker", "operator", "migrate", "accounts", "keys"]
)
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help", env=clean_env())
    assert result.returncode == 0
    assert f"usage: mailish {command}" in result.stdout


async def test_concurrent_migrate_commands_both_succeed(empty_db_dsn: str) -> None:
    env = clean_env(MAILISH_DATABASE_URL=empty_db_dsn)
    procs = [
        subprocess.Popen([*MAILISH, "migrate"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = f"{len(bundled_migrations())} migration(s) applied"
    assert sum(applied in out for out in outputs) == 1, outputs  # one did all, two found none


async def test_worker_serves_probes_and_metrics(db_dsn: str) -> None:
    """Outside Kubernetes too: /healthz, /readyz (once assigned) and /metrics."""
    port = free_port()
    env = clean_env(
        MAILISH_DATABASE_URL=db_dsn,
        MAILISH_SECRET_KEYS=run("keys", "new", env=clean_env()).stdout.strip(),
        MAILISH_METRICS_PORT=str(port),
    )
    proc = subprocess.Popen([*MAILISH, "worker"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)
                raise AssertionError(proc.communicate(timeout=30)[1][-3000:])
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        exposition = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "shards_in_sync" in exposition
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
