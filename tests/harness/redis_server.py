"""A real redis-server for tests, on a unix socket in a throwaway folder (no port to collide).

Persistence is off; ``snapshot()`` returns every key and value so a test can assert what an
RDB file or a ``MONITOR`` would have shown. ``pause()`` stops the process (SIGSTOP) to make
Redis unreachable without losing its state; ``resume()`` continues it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class RedisNotInstalledError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RedisNotInstalledError(
                "redis-server is not installed: run `scripts/system-packages.sh test` "
                "(apt-get install redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.socket = folder / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.folder), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self._process is not None:
            self.resume()
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def pause(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """One command in RESP over a fresh connection; the raw first reply line(s)."""
        request = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            request += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply.rstrip(b"\r\n")

    def snapshot(self) -> bytes:
        """Every key with its value (DUMP-free: KEYS then GET), as one byte string."""
        import redis

        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            out = b""
            for key in client.keys("*"):
                value = client.get(key)
                out += bytes(key) + b"=" + (bytes(value) if value is not None else b"") + b"\n"
            return out
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server per session, in its own folder outside pytest's tmp root (which a
    concurrent pytest run may reset or prune)."""
    folder = Path(tempfile.mkdtemp(prefix="mailish-test-redis-"))
    try:
        server = RedisServer(folder)
    except RedisNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
