"""Small real servers for discovery tests: HTTPS documents, canaries, IMAP/SMTP greeters.

- ``HttpsServer`` serves fixed answers keyed by (Host, path) over TLS with a certificate from
  a test CA, so one listener stands in for the ISPDB, ``autoconfig.<domain>`` and
  ``<domain>/.well-known``. It records every request (host, path and query).
- ``Canary`` is a bare TCP listener that only counts connections: an SSRF test points a
  domain's records at it and asserts the count stays zero.
- ``Greeter`` speaks just enough IMAP or SMTP (greeting, CAPABILITY/EHLO) with implicit TLS
  or a STARTTLS offer for the guessing step to accept it.

All run in threads (socketserver), so they need no event loop and cannot leak asyncio tasks.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a stuck server)
    drip: bool = False  # send the body slowly, one byte every 0.05 s


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        path, _, query = self.path.partition("?")
        self.server.owner.requests.append((host, path, query))
        answer = self.server.owner.routes.get((host, path), Answer(404, b"not found"))
        time.sleep(answer.delay)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if answer.drip:
                for i in range(len(answer.body)):
                    self.wfile.write(answer.body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(answer.body)
        except OSError:
            pass  # the client gave up (size or time limit): that is what the test wants

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpsServer


class HttpsServer:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.routes: dict[tuple[str, str], Answer] = {}
        self.requests: list[tuple[str, str, str]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def route(self, host: str, path: str, answer: Answer) -> None:
        self.routes[(host, path)] = answer

    def clear(self) -> None:
        self.routes.clear()
        self.requests.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Canary:
    """Counts TCP connections; accepts and closes them at once."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


class _GreeterHandler(socketserver.StreamRequestHandler):
    server: _GreeterServer

    def handle(self) -> None:
        imap = self.server.protocol == "imap"
        self.wfile.write(b"* OK ready\r\n" if imap else b"220 ready ESMTP\r\n")
        for _ in range(5):
            line = self.rfile.readline(1000)
            if not line:
                return
            if imap and b"CAPABILITY" in line.upper():
                tag = line.split()[0]
                self.wfile.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n" + tag + b" OK done\r\n")
            elif not imap and line.upper().startswith(b"EHLO"):
                self.wfile.write(b"250-hello\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            else:
                return


class _GreeterServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    protocol: str


class Greeter:
    """An IMAP or SMTP greeter; with ``context`` it speaks implicit TLS."""

    def __init__(self, protocol: str, context: ssl.SSLContext | None = None) -> None:
        self._server = _GreeterServer(("127.0.0.1", 0), _GreeterHandler)
        self._server.protocol = protocol
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
