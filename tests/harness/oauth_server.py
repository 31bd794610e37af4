"""A real OAuth2 token endpoint for tests (HTTPS with the test CA, in a thread).

It mints HS256 JWTs with ``tests.harness.oauth.make_token``, which the test Dovecot (XOAUTH2 with
local validation) and the test SMTP server accept. Behaviour a provider has and tests need:

- refresh tokens rotate: each refresh issues a new one and kills the old (so a lost rotation or a
  double refresh shows up as ``invalid_grant``);
- authorization codes are single-use and checked against ``redirect_uri`` and the PKCE S256
  ``code_challenge``;
- ``requests`` counts calls per grant type; ``delay`` slows each answer (to widen races);
  ``fail_with`` scripts the next answers' status codes (e.g. 503).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.harness.ca import LocalCA
from tests.harness.oauth import make_token

CLIENT_ID = "mailish-test-client"
CLIENT_SECRET = "mailish-test-client-secret"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        status, body = owner.answer(self.path, form)
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OAuthServer


class OAuthServer:
    def __init__(self, ca: LocalCA, *, ttl: int = 3600) -> None:
        self.ttl = ttl
        self.delay = 0.0
        self.rotate = True
        self.fail_with: list[int] = []
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._refresh: dict[str, str] = {}  # refresh token -> user
        self._codes: dict[str, tuple[str, str, str]] = {}  # code -> (user, redirect, challenge)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        context = ca.server_context()
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def token_url(self) -> str:
        return f"https://localhost:{self._httpd.server_address[1]}/token"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- grants -------------------------------------------------------------------------------

    def issue_refresh_token(self, user: str) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        with self._lock:
            self._refresh[token] = user
        return token

    def revoke(self, user: str) -> None:
        with self._lock:
            for token in [t for t, u in self._refresh.items() if u == user]:
                del self._refresh[token]

    def issue_code(self, user: str, *, redirect_uri: str, code_verifier: str) -> str:
        code = "code-" + secrets.token_urlsafe(12)
        with self._lock:
            self._codes[code] = (user, redirect_uri, s256(code_verifier))
        return code

    def total(self) -> int:
        return sum(self.requests.values())

    # --- the endpoint ---------------------------------------------------------------------------

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "?")
        with self._lock:
            self.requests[grant] += 1
            scripted = self.fail_with.pop(0) if self.fail_with else None
        if self.delay:
            time.sleep(self.delay)
        if scripted is not None:
            return scripted, {"error": "temporarily_unavailable"}
        if path != "/token":
            return 404, {"error": "not_found"}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        with self._lock:
            if grant == "refresh_token":
                user = self._refresh.get(form.get("refresh_token", ""))
                if user is not None and self.rotate:
                    del self._refresh[form["refresh_token"]]
            elif grant == "authorization_code":
                user, redirect, challenge = self._codes.pop(form.get("code", ""), (None, "", ""))
                if user is not None and (
                    form.get("redirect_uri") != redirect
                    or s256(form.get("code_verifier", "")) != challenge
                ):
                    user = None
            else:
                return 400, {"error": "unsupported_grant_type"}
        if user is None:
            return 400, {"error": "invalid_grant", "error_description": "revoked or unknown"}
        body: dict[str, Any] = {
            "access_token": make_token(user, ttl=self.ttl),
            "token_type": "Bearer",
            "expires_in": self.ttl,
        }
        if self.rotate or grant == "authorization_code":
            body["refresh_token"] = self.issue_refresh_token(user)
        return 200, body


@pytest.fixture
def oauth_server(test_ca: LocalCA) -> Iterator[OAuthServer]:
    """A fresh token endpoint per test (tests change ``ttl``, ``rotate``, ``fail_with``)."""
    server = OAuthServer(test_ca)
    server.start()
    yield server
    server.stop()


def provider_config(server: OAuthServer, **extra: object) -> dict[str, object]:
    """The ``MAILISH_OAUTH_PROVIDERS`` entry for this endpoint (provider ``test``)."""
    return {
        "token_url": server.token_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "scopes": ["mail"], **extra,
    }  # fmt: skip
