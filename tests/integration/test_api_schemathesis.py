"""schemathesis against the real API: a real uvicorn serving ``/openapi.json``, an account
linked to Dovecot with synced mail, and for every operation generated requests sent with a
valid token and with forged, revoked, expired (the account was unlinked) and malformed ones.

What must hold for every response:

- no 5xx;
- 2xx answers conform to the documented schema and content type;
- every 4xx is our error body ``{"error": str, "detail": str, ...}``;
- with a bad token, a request that is valid by the schema is answered 401 (with
  ``WWW-Authenticate: Bearer``) before anything else looks at it.

Bounded for the default suite (``EXAMPLES`` per operation, derandomized, so CI runs the same
cases); the ``slow`` variant runs many more random ones. ``GET /v1/events`` is a stream that
never ends, so it is checked by hand; ``DELETE /v1/account`` would destroy the fixture, so it
runs once, on a second account, which is what makes the "expired" token.

How DNS reaches nothing: ``POST /v1/accounts`` may run discovery on fuzzed domains. The
resolver configuration dnspython reads is pointed at an empty local DNS server (every name
is NXDOMAIN), and the API refuses private hosts, so fuzzing cannot reach real servers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.resolver
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.store import tokens
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dns_server import LocalDns
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked, serve
from tests.integration.test_api_messages import link_account, rich_message, sync_and_index

EXAMPLES = 20
SLOW_EXAMPLES = 150
#: Not fuzzed: an endless stream (checked by hand) and the fixture's own destruction.
EXCLUDED = {("GET", "/v1/events"), ("DELETE", "/v1/account")}
#: Operations that destroy what later ones read go last.
LAST = ("DELETE", "PATCH")


@dataclass
class Tokens:
    valid: str
    bad: dict[str, str]  # kind -> token (or a whole Authorization value for "malformed")

    def bad_header(self, n: int) -> tuple[str, dict[str, str]]:
        kinds = [*self.bad, "forged", "absent"]
        kind = kinds[n % len(kinds)]
        if kind == "forged":
            return kind, {"Authorization": f"Bearer {tokens.PREFIX}{secrets.token_urlsafe(32)}"}
        if kind == "absent":
            return kind, {}
        value = self.bad[kind]
        return kind, {"Authorization": value if kind == "malformed" else f"Bearer {value}"}


@dataclass
class World:
    base: str
    tokens: Tokens
    #: Real ids of the linked account, for a pass where path parameters exist.
    ids: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def empty_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server = LocalDns()
    server.start()

    def read_resolv_conf(self: dns.resolver.BaseResolver, _filename: object) -> None:
        self.nameservers = ["127.0.0.1"]
        self.port = server.port

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", read_resolv_conf)
    yield
    server.stop()


@pytest.fixture
async def world(
    db_dsn: str, db_pool: Pool, dovecot: Dovecot, keyring: KeyRing, policy: ConnectionPolicy,
    test_ca: LocalCA, linked: Linked, empty_dns: None,
) -> AsyncIterator[World]:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    for n in range(3):
        raw = rich_message(subject=f"fuzz {n}", sender="carol@example.org", body_word="ledger",
                           when=now - dt.timedelta(hours=n))  # fmt: skip
        dovecot.deliver(linked.user, raw)
    await sync_and_index(db_pool, linked)
    revoked_account = await link_account(db_pool, dovecot, keyring, policy)
    async with db_pool.acquire() as conn:
        await tokens.revoke_all(conn, account_id=revoked_account.account_id)  # type: ignore[arg-type]
    gone = await link_account(db_pool, dovecot, keyring, policy)
    async with serve(
        db_dsn, keyring, test_ca, allow_private_hosts=False, imap_timeout=3.0,
        ispdb_url="https://ispdb.invalid/v1.1/", api_burst=1_000_000, api_rate=100_000.0,
    ) as running, httpx.AsyncClient(base_url=running.base, timeout=30) as client:  # fmt: skip
        unlinked = await client.delete(
            "/v1/account", headers={"Authorization": f"Bearer {gone.token}"}
        )
        assert unlinked.status_code == 204
        bad = {
            "revoked": revoked_account.token,
            "expired": gone.token,
            "malformed": f"Basic {linked.token}",
            "oversized": f"{tokens.PREFIX}{'x' * 300}",
        }
        world = World(running.base, Tokens(linked.token, bad))
        world.ids = await _known_ids(client, linked.token)
        yield world


async def _known_ids(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    folders = (await client.get("/v1/folders", headers=headers)).json()["folders"]
    inbox = next(f["id"] for f in folders if f["name"] == "INBOX")
    listing = (await client.get(f"/v1/folders/{inbox}/messages", headers=headers)).json()
    message = listing["messages"][0]["id"]
    full = (await client.get(f"/v1/messages/{message}", headers=headers)).json()
    attachment = full["attachments"][0]["id"]
    return {"folder": inbox, "message": message, "attachment": attachment}


# -- the run -------------------------------------------------------------------------------


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    calls: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, label: str, what: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(f"{label}: {what}")


def _header(response: Any, name: str) -> str:
    """A header of a schemathesis response (values are lists) or an httpx one."""
    value = response.headers.get(name, "")
    return str(value[0] if isinstance(value, list) and value else value or "")


def _error_body_problem(response: Any) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} without a JSON body: {response.text[:120]!r}"
    if not isinstance(body, dict):
        return f"{response.status_code} body is not an object: {response.text[:120]!r}"
    if not isinstance(body.get("error"), str) or not isinstance(body.get("detail"), str):
        return f"{response.status_code} body is not {{error, detail}}: {response.text[:200]!r}"
    return None


def _path_parameters(path: str, ids: dict[str, Any]) -> dict[str, Any] | None:
    """Real ids for the operation's path parameters, or None if it has some we lack."""
    known = {"/v1/folders/{id}": {"id": ids["folder"]},
             "/v1/folders/{id}/messages": {"id": ids["folder"]},
             "/v1/messages/{id}": {"id": ids["message"]},
             "/v1/messages/{id}/raw": {"id": ids["message"]},
             "/v1/messages/{id}/attachments/{attachment_id}":
                 {"id": ids["message"], "attachment_id": ids["attachment"]}}  # fmt: skip
    return known.get(path)


def _operations(schema: Any) -> list[Any]:
    found = [result.ok() for result in schema.get_all_operations()]
    wanted = [op for op in found if (op.method.upper(), op.path) not in EXCLUDED]
    return sorted(wanted, key=lambda op: op.method.upper() in LAST)


def fuzz(world: World, examples: int, *, derandomize: bool) -> Findings:
    """Runs in a thread: schemathesis calls are blocking, the API runs on the test's loop."""
    schema = schemathesis.openapi.from_url(f"{world.base}/openapi.json")
    findings = Findings()
    session = requests.Session()
    counter = itertools.count()
    valid = {"Authorization": f"Bearer {world.tokens.valid}"}

    def exercise(label: str, case: Any, secured: bool, positive: bool) -> None:
        response = case.call(session=session, headers=valid, timeout=30)
        findings.calls += 1
        findings.statuses[response.status_code] = findings.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            findings.add(label, f"{response.status_code} for {case.as_curl_command()}")
        elif response.status_code < 400:
            try:
                case.validate_response(
                    response, checks=[response_schema_conformance, content_type_conformance]
                )
            except (Exception, BaseExceptionGroup) as exc:
                causes = "; ".join(str(e)[:400] for e in getattr(exc, "exceptions", []))
                findings.add(label, f"schema: {causes or str(exc)[:400]}")
        else:
            problem = _error_body_problem(response)
            if problem:
                findings.add(label, problem)
        if not secured:
            return
        kind, headers = world.tokens.bad_header(next(counter))
        denied = case.call(session=session, headers=headers, timeout=30)
        findings.calls += 1
        if denied.status_code >= 500:
            findings.add(label, f"{kind} token: {denied.status_code}")
        elif positive and denied.status_code != 401:
            findings.add(label, f"{kind} token: {denied.status_code} {denied.text[:120]!r}")
        elif denied.status_code < 400:
            findings.add(label, f"{kind} token got through: {denied.status_code}")
        elif denied.status_code == 401:
            problem = _error_body_problem(denied)
            if problem or denied.json().get("error") != "unauthorized":
                findings.add(label, f"{kind} token: {problem or denied.text[:120]}")
            if _header(denied, "www-authenticate").lower() != "bearer":
                findings.add(label, f"{kind} token: 401 without WWW-Authenticate: Bearer")

    options = settings(
        max_examples=examples, deadline=None, database=None, derandomize=derandomize,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
    )  # fmt: skip
    for operation in _operations(schema):
        secured = bool(operation.definition.raw.get("security"))
        runs = [(schemathesis.GenerationMode.POSITIVE, None, examples),
                (schemathesis.GenerationMode.NEGATIVE, None, max(examples // 2, 1))]  # fmt: skip
        known = _path_parameters(operation.path, world.ids)
        if known is not None:
            runs.append((schemathesis.GenerationMode.POSITIVE, known, max(examples // 2, 1)))
        for mode, path_parameters, count in runs:
            label = f"{operation.label} [{mode.value}{' known ids' if path_parameters else ''}]"
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            positive = mode is schemathesis.GenerationMode.POSITIVE

            began = time.monotonic()
            try:
                _runner(exercise, strategy, settings(options, max_examples=count),
                        label, secured=secured, positive=positive)()  # fmt: skip
            except Exception as exc:
                findings.add(label, f"run failed: {type(exc).__name__}: {str(exc)[:300]}")
            findings.seconds[label] = time.monotonic() - began
    session.close()
    return findings


def _runner(
    exercise: Callable[[str, Any, bool, bool], None], strategy: Any, options: settings,
    label: str, *, secured: bool, positive: bool,
) -> Callable[[], None]:  # fmt: skip
    """One Hypothesis test for one operation and mode (a factory, so nothing late-binds)."""

    @options
    @given(case=strategy)
    def run(case: Any) -> None:
        exercise(label, case, secured, positive)

    return run


async def _run(world: World, examples: int, *, derandomize: bool) -> Findings:
    started = time.monotonic()
    findings = await asyncio.to_thread(fuzz, world, examples, derandomize=derandomize)
    elapsed = time.monotonic() - started
    print(f"schemathesis: {findings.calls} calls in {elapsed:.1f} s; statuses {findings.statuses}")
    slowest = sorted(findings.seconds.items(), key=lambda item: -item[1])[:3]
    print("  slowest: " + ", ".join(f"{label} {spent:.1f} s" for label, spent in slowest))
    for problem in findings.problems:
        print("  " + problem)
    return findings


async def test_schemathesis_finds_no_server_errors_or_schema_violations(world: World) -> None:
    findings = await _run(world, EXAMPLES, derandomize=True)
    assert findings.calls > 200
    assert findings.statuses.keys() & {200, 201, 202, 204}, "nothing succeeded: a broken fixture"
    assert findings.problems == []


@pytest.mark.slow
async def test_schemathesis_long_run(world: World) -> None:
    findings = await _run(world, SLOW_EXAMPLES, derandomize=False)
    assert findings.problems == []


async def test_event_stream_requires_a_valid_token(world: World) -> None:
    """``GET /v1/events`` never ends, so it is checked here rather than fuzzed."""
    async with httpx.AsyncClient(base_url=world.base, timeout=10) as client:
        for n in range(len(world.tokens.bad) + 2):
            kind, headers = world.tokens.bad_header(n)
            denied = await client.get("/v1/events", headers=headers)
            assert denied.status_code == 401, kind
            assert _error_body_problem(denied) is None
        headers = {"Authorization": f"Bearer {world.tokens.valid}"}
        async with client.stream("GET", "/v1/events", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")


def test_openapi_documents_the_error_body() -> None:
    """What the API answers on errors is what the OpenAPI document promises."""
    from mailish.api.app import create_app
    from mailish.config import load_settings

    document = create_app(load_settings(), dsn="postgresql://unused").openapi()
    wrong = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            responses = operation.get("responses", {})
            text = str(responses.get("422", ""))
            if "HTTPValidationError" in text:
                wrong.append(f"{method.upper()} {path}: 422 is HTTPValidationError")
            if operation.get("security") and "401" not in responses:
                wrong.append(f"{method.upper()} {path}: 401 undocumented")
    assert wrong == []


async def test_what_fuzzing_found_stays_fixed(world: World) -> None:
    """Each was a 500: ids beyond bigint, digits int() cannot read, a rename onto a name
    that exists."""
    message = world.ids["message"]
    huge = -59667409392344009583647143231488
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("PATCH", f"/v1/messages/{message}", {"folder_id": huge}, 422),
        ("PATCH", f"/v1/messages/{message}", {"folder_id": 2**63}, 422),
        ("POST", "/v1/folders", {"name": "n", "parent_id": 2**64}, 422),
        ("POST", "/v1/drafts", {"attachment_ids": ["\u00b3"]}, 422),
        ("POST", "/v1/drafts", {"attachment_ids": ["u\u00b3"]}, 422),
        ("POST", "/v1/drafts", {"attachment_ids": ["u99999999999999999999"]}, 422),
        ("POST", "/v1/drafts", {"attachment_ids": ["99999999999999999999"]}, 422),
        ("POST", "/v1/folders", {"name": "Taken"}, 202),
        ("POST", "/v1/folders", {"name": "Renamed"}, 202),
    ]
    headers = {"Authorization": f"Bearer {world.tokens.valid}"}
    async with httpx.AsyncClient(base_url=world.base, headers=headers, timeout=30) as client:
        for method, path, body, expected in cases:
            answer = await client.request(method, path, json=body)
            assert answer.status_code == expected, (method, path, body, answer.text)
            if expected >= 400:
                assert _error_body_problem(answer) is None
        listing = (await client.get("/v1/folders")).json()["folders"]
        renamed = next(f["id"] for f in listing if f["name"] == "Renamed")
        clash = await client.patch(f"/v1/folders/{renamed}", json={"name": "Taken"})
        assert (clash.status_code, clash.json()["error"]) == (409, "conflict")
