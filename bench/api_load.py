"""The API side of the API benchmark: ``mailish api`` processes and wrk as the load generator.

Each api process is a separate ``python -m mailish api`` (one uvicorn worker, its own asyncpg
pool of the default size), started in its own session so it can be killed with everything
it started. ``mailish api`` binds with SO_REUSEADDR only, so two processes cannot share one
port without changing mailish: each gets its own port, and the wrk Lua script pins each wrk
thread to one of them (``thread.addr`` in ``setup``), which spreads the connections evenly.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import run_child, tree_cpu_s
from tests.harness.dovecot import free_port

WRK = "/usr/bin/wrk"
REPO = Path(__file__).resolve().parent.parent

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the forked child: SIGKILL it if the benchmark dies without cleaning up."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ApiProcess:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class ApiFleet:
    """``mailish api`` processes on one database; ``close()`` stops every one of them."""

    def __init__(self, *, dsn: str, secret_keys: str, folder: Path) -> None:
        self.dsn = dsn
        self.secret_keys = secret_keys
        self.folder = folder  # working folder (so no stray .env is read) and logs
        self.processes: list[ApiProcess] = []

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.processes]

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.processes]

    def env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
        env.update(
            MAILISH_DATABASE_URL=self.dsn,
            MAILISH_API_HOST="127.0.0.1",
            MAILISH_API_PORT=str(port),
            MAILISH_SECRET_KEYS=self.secret_keys,
            # the per-token limit (default 20/s, burst 100) would turn the benchmark into 429s
            MAILISH_API_RATE="1000000000",
            MAILISH_API_BURST="1000000000",
            MAILISH_LOG_LEVEL="WARNING",
            MAILISH_LOG_FORMAT="text",
            PYTHONPATH=str(REPO),  # the mailish source this benchmark runs, not the installed one
        )
        return env

    def add(self, ready_timeout: float = 60.0) -> ApiProcess:
        """Start one more api process and wait until ``/readyz`` answers 200."""
        port = free_port()
        n = len(self.processes) + 1
        log_path = self.folder / f"api{n}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailish", "api"],
                cwd=self.folder,
                env=self.env(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(
                    _die_with_parent if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )  # fmt: skip
        api = ApiProcess(port, proc, log_path)
        self.processes.append(api)
        deadline = time.monotonic() + ready_timeout
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"mailish api exited with {proc.returncode}:\n{api.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        return api
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mailish api not ready in {ready_timeout} s:\n"
                                       f"{api.log_tail()}")  # fmt: skip
                time.sleep(0.1)

    def cpu_s(self) -> float:
        return sum(tree_cpu_s(pid) for pid in self.pids)

    def check_alive(self) -> None:
        for api in self.processes:
            if api.proc.poll() is not None:
                raise RuntimeError(
                    f"mailish api on port {api.port} died ({api.proc.returncode}):\n"
                    f"{api.log_tail()}"
                )

    def close(self) -> None:
        """SIGTERM (graceful: uvicorn drains, the pool closes), then SIGKILL what is left."""
        for api in self.processes:
            if api.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(api.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for api in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                api.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(api.proc.pid, signal.SIGKILL)
            api.proc.wait()
        self.processes.clear()

    def __enter__(self) -> ApiFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- wrk ------------------------------------------------------------------------------------

_LUA = """\
-- generated by bench/api_load.py
local ports = {%(ports)s}
local token = "%(token)s"
local mode = "%(mode)s"
local folder = %(folder)d
local ids_file = "%(ids_file)s"
local counter = 0

-- main Lua state, once per wrk thread: pin the thread (and its connections) to one port
function setup(thread)
  local port = ports[(counter %% #ports) + 1]
  thread.addr = wrk.lookup("127.0.0.1", tostring(port))[1]
  thread:set("tid", counter)
  counter = counter + 1
end

local ids = {}
local list_path = "/v1/folders/" .. folder .. "/messages?limit=50"

function init(args)
  math.randomseed(7919 * (tid + 1))
  if mode == "read" then
    for line in io.lines(ids_file) do ids[#ids + 1] = tonumber(line) end
  end
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  if mode == "list" then
    return wrk.format("GET", list_path)
  end
  return wrk.format("GET", "/v1/messages/" .. ids[math.random(#ids)])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One measurement: latencies in seconds, rate in requests/s, CPU in seconds."""

    requests: int
    seconds: float
    p50_s: float
    p99_s: float
    bytes_per_response: float
    errors: int  # socket errors + non-2xx/3xx statuses
    server_cpu_s: float  # the mailish api processes (IMAP rows: 0)
    pg_cpu_s: float
    dovecot_cpu_s: float
    client_cpu_s: float
    window_s: float  # wall time over which the CPU seconds were counted
    machine_cpu_s: float  # every process on the machine (from /proc/stat)

    @property
    def other_cpu_s(self) -> float:
        """CPU that none of the row's own processes used: other work on the machine."""
        own = self.server_cpu_s + self.pg_cpu_s + self.dovecot_cpu_s + self.client_cpu_s
        return max(0.0, self.machine_cpu_s - own)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def write_wrk_script(
    path: Path, *, ports: list[int], token: str, mode: str, folder: int, ids_file: Path
) -> Path:
    assert mode in ("list", "read")
    assert token.isprintable()
    assert '"' not in token
    assert "\\" not in token
    path.write_text(
        _LUA
        % {
            "ports": ", ".join(str(p) for p in ports),
            "token": token,
            "mode": mode,
            "folder": folder,
            "ids_file": str(ids_file),
        }
    )
    return path


def run_wrk(
    script: Path,
    *,
    port: int,
    conns: int,
    threads: int,
    seconds: float,
    fleet: ApiFleet,
    pg_pid: int | None,
    dovecot_pid: int | None,
) -> LoadResult:
    """Run wrk against the fleet (the URL's port is only a default: setup() pins threads)."""
    argv = [
        WRK, f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(script), f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    api0, pg0, dc0 = fleet.cpu_s(), tree_cpu_s(pg_pid), tree_cpu_s(dovecot_pid)
    all0 = machine_cpu_s()
    run = run_child(argv, timeout=seconds + 120)
    all1 = machine_cpu_s()
    api1, pg1, dc1 = fleet.cpu_s(), tree_cpu_s(pg_pid), tree_cpu_s(dovecot_pid)
    fleet.check_alive()
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK-JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{run.stdout}\n{run.stderr}")
    out = json.loads(line.removeprefix("WRK-JSON "))
    errors = sum(out[k] for k in ("connect", "read", "write", "status", "timeout"))
    requests = int(out["requests"])
    return LoadResult(
        requests=requests, seconds=out["duration_us"] / 1e6, p50_s=out["p50_us"] / 1e6,
        p99_s=out["p99_us"] / 1e6, bytes_per_response=out["bytes"] / max(1, requests),
        errors=errors, server_cpu_s=api1 - api0, pg_cpu_s=pg1 - pg0, dovecot_cpu_s=dc1 - dc0,
        client_cpu_s=run.user_s + run.sys_s, window_s=run.wall_s, machine_cpu_s=all1 - all0,
    )  # fmt: skip


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, every process)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, *, cores: float = 0.25, sample: float = 3.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine uses under ``cores`` cores for ``sample`` s.

    Returns the busy cores of the last sample. Other people's test runs on a 2-core machine
    change the numbers more than anything we measure.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_cpu_s()
        time.sleep(sample)
        busy = (machine_cpu_s() - before) / sample
        if busy < cores or time.monotonic() > deadline:
            return busy


def wrk_version() -> str:
    done = subprocess.run([WRK, "--version"], capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "wrk ?"
