"""Account isolation, driven by the OpenAPI document so routes added later are covered too.

Two accounts with real synced mail: every path that takes an id, called with account A's token
on account B's objects (and on mixes of A's and B's ids), for every method, must answer 404 with
the body a nonexistent id gets (405 for a method the path does not declare), must not mention
any of B's data, and must leave B's objects as they were. A positive control (A's token on A's
objects answers 200 for GET) keeps the table from passing because a route is simply broken.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.store.connecting import Pool
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked, RunningApi
from tests.integration.test_api_messages import link_account, rich_message, sync_and_index

METHODS = ("get", "put", "patch", "post", "delete")  # reads first, deletes last
_PARAM = re.compile(r"\{([^}]+)\}")
_KIND_ALIASES = {"subscription": "device", "parent": "folder"}
KNOWN_ID_PATHS = {
    "/v1/folders/{id}/messages", "/v1/messages/{id}", "/v1/messages/{id}/raw",
    "/v1/messages/{id}/attachments/{attachment_id}",
}  # fmt: skip
# Read back after the probes: what a leaked write would have changed.
B_STATE = """
SELECT m.folder_id, m.seen, m.flagged, m.expunged_at, f.name,
    (SELECT count(*) FROM push_subscriptions p WHERE p.account_id = m.account_id) AS devices,
    (SELECT count(*) FROM operations o WHERE o.account_id = m.account_id) AS operations,
    (SELECT count(*) FROM outbox o WHERE o.account_id = m.account_id AND o.status = 'queued')
        AS queued,
    (SELECT count(*) FROM drafts d WHERE d.account_id = m.account_id) AS drafts
FROM messages m JOIN folders f ON f.id = m.folder_id
WHERE m.account_id = $1 AND m.id = $2
"""


@dataclass(frozen=True)
class World:
    """One account's token, its objects by kind, and strings that identify its mail."""

    token: str
    objects: dict[str, str]
    secrets: tuple[str, ...]


def kind_of(path: str, param: str) -> str:
    """``attachment_id`` → attachment; a bare ``{id}`` is named by the segment before it."""
    if path.startswith("/v1/outbox/") and param == "operation_id":
        return "outbox"  # sends are outbox rows (UUIDs), not queued operations
    if param != "id":
        base = param.removesuffix("_id")
    else:
        segments = path.split("/")
        base = segments[segments.index("{id}") - 1].removesuffix("s")
    return _KIND_ALIASES.get(base, base)


async def build_world(
    db_pool: Pool, dovecot: Dovecot, account: Linked, *, marker: str, when: dt.datetime
) -> World:
    sender = f"{marker.lower()}@{marker.lower()}.example"
    subject = f"{marker} private subject"
    dovecot.deliver(
        account.user, rich_message(subject=subject, sender=sender, body_word=marker, when=when)
    )
    await sync_and_index(db_pool, account)
    async with db_pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT m.folder_id, m.id, a.id AS attachment_id FROM messages m "
            "JOIN attachments a ON a.message_id = m.id WHERE m.account_id = $1 ORDER BY a.id "
            "LIMIT 1",
            account.account_id,
        )
        operation_id = await conn.fetchval(
            "INSERT INTO operations (account_id, kind, payload, status) "
            "VALUES ($1, 'isolation_probe', '{}'::jsonb, 'done') RETURNING id",
            account.account_id,
        )
        raw = f"Subject: {marker} probe\r\n\r\nx\r\n".encode()
        digest = hashlib.sha256(raw).digest()
        await conn.execute(
            "INSERT INTO message_blobs (account_id, sha256, size, data) VALUES ($1, $2, $3, $4)",
            account.account_id, digest, len(raw), raw,
        )  # fmt: skip
        outbox_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO outbox (id, account_id, idempotency_key, request_hash, "
            "header_message_id, raw_sha256, envelope_from, recipients, send_at) "
            "VALUES ($1, $2, 'probe', $3, 'probe@example.test', $3, 'a@example.test', "
            "ARRAY['b@example.test'], now() + interval '1 day')",
            outbox_id, account.account_id, digest,
        )  # fmt: skip
        draft_id = f"draft-{marker.lower()}@example.test"
        await conn.execute(
            "INSERT INTO drafts (account_id, id, raw_sha256, envelope_from) "
            "VALUES ($1, $2, $3, 'a@example.test')",
            account.account_id, draft_id, digest,
        )  # fmt: skip
        device_id = f"device-{marker.lower()}"
        await conn.execute(
            "INSERT INTO push_subscriptions (account_id, device_id, endpoint) VALUES ($1, $2, $3)",
            account.account_id, device_id, f"https://push.example/{marker.lower()}",
        )  # fmt: skip
    objects = {
        "folder": str(row["folder_id"]), "message": str(row["id"]),
        "attachment": str(row["attachment_id"]), "operation": str(operation_id),
        "device": device_id, "outbox": str(outbox_id), "draft": draft_id,
    }  # fmt: skip
    email = f"{account.user.name}@example.test"
    return World(account.token, objects, (subject, sender, email, marker, device_id))


def example(schema: dict[str, Any], doc: dict[str, Any], name: str, own: World) -> Any:
    """A valid value for ``schema``; id-like fields point at the caller's own objects."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return example(options[0], doc, name, own)
    kind = _KIND_ALIASES.get(name.removesuffix("_id"), name.removesuffix("_id"))
    if name.endswith("_id") and kind in own.objects:
        value = own.objects[kind]
        return int(value) if schema.get("type") == "integer" else value
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    match schema.get("type"):
        case "object":
            props = schema.get("properties", {})
            return {key: example(sub, doc, key, own) for key, sub in props.items()}
        case "array":
            return []
        case "boolean":
            return True
        case "integer" | "number":
            return max(1, schema.get("minimum", 1))
        case _:
            text = "isolation probe"
            return text.ljust(schema.get("minLength", 0), "x")[: schema.get("maxLength", 100)]


@dataclass(frozen=True)
class Probe:
    path: str
    method: str
    url: str
    nonexistent_url: str
    body: Any
    query: dict[str, Any]
    declared: bool
    resolved: bool  # every parameter named an object we created


def probes(doc: dict[str, Any], a: World, b: World) -> list[Probe]:
    """Every (path with an id, method, mix of A's and B's ids with at least one of B's)."""
    out: list[Probe] = []
    rnd = random.Random(4)
    for path, item in doc["paths"].items():
        params = _PARAM.findall(path)
        if not params:
            continue
        kinds = [kind_of(path, p) for p in params]
        resolved = all(k in a.objects and k in b.objects for k in kinds)
        absent = {
            p: str(uuid.UUID(int=rnd.getrandbits(128)))
            if kinds[i] == "outbox"
            else f"absent-{rnd.randrange(10**9)}@example.test"
            if kinds[i] == "draft"
            else str(rnd.randrange(10**12, 10**15))
            for i, p in enumerate(params)
        }
        for method in METHODS:
            op = item.get(method)
            body = query = None
            if op is not None:
                schema = (op.get("requestBody") or {}).get("content", {}).get("application/json")
                body = example(schema["schema"], doc, "body", a) if schema else None
                query = {
                    q["name"]: example(q["schema"], doc, q["name"], a)
                    for q in op.get("parameters", []) if q["in"] == "query" and q.get("required")
                }  # fmt: skip
            owners = itertools.product((a, b), repeat=len(params)) if resolved else [()]
            for combo in owners:
                if resolved and b not in combo:
                    continue
                values = (
                    {p: w.objects[k] for p, k, w in zip(params, kinds, combo, strict=True)}
                    if resolved
                    else absent
                )
                out.append(Probe(
                    path, method, _fill(path, values), _fill(path, absent), body, query or {},
                    op is not None, resolved,
                ))  # fmt: skip
    return out


async def call(
    client: httpx.AsyncClient,
    token: str,
    method: str,
    url: str,
    body: Any = None,
    query: dict[str, Any] | None = None,
) -> httpx.Response:
    """One request, waiting out the per-token rate limit (the table grows with the API)."""
    for _ in range(50):
        answer = await client.request(
            method.upper(),
            url,
            json=body,
            params=query,
            headers={"Authorization": f"Bearer {token}"},
        )
        if answer.status_code != 429:
            return answer
        await asyncio.sleep(float(answer.headers.get("retry-after", "0.1")))
    raise AssertionError(f"{method} {url}: still rate limited")


def _fill(path: str, values: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: values[m[1]], path)


def _normalised(response: httpx.Response, url: str) -> str:
    """The body with the probed ids blanked, so "no such message 7" equals "... 9"."""
    text = response.text
    for value in sorted(set(url.split("/")), key=len, reverse=True):
        if value.isdigit() or value.startswith("device-"):
            text = text.replace(value, "{id}")
    return text


async def test_another_accounts_ids_answer_404_and_leak_nothing(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, keyring: KeyRing,
    policy: ConnectionPolicy,
) -> None:  # fmt: skip
    other = await link_account(db_pool, dovecot, keyring, policy)
    when = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    tag = uuid.uuid4().hex[:8]
    a = await build_world(db_pool, dovecot, linked, marker=f"Alpha{tag}", when=when)
    b = await build_world(db_pool, dovecot, other, marker=f"Bravo{tag}", when=when)
    async with db_pool.acquire() as conn:
        b_before = dict(await conn.fetchrow(B_STATE, other.account_id, int(b.objects["message"])))

    async with httpx.AsyncClient(base_url=api.base, timeout=10) as client:
        doc = (await client.get("/openapi.json")).json()
        table = probes(doc, a, b)
        assert {p.path for p in table} >= KNOWN_ID_PATHS
        for path in {p.path for p in table if p.resolved and p.method == "get" and p.declared}:
            own = {p: a.objects[kind_of(path, p)] for p in _PARAM.findall(path)}
            control = await call(client, a.token, "get", _fill(path, own))
            assert control.status_code == 200, (path, control.status_code, control.text)

        failures: list[str] = []
        for probe in table:
            answer, baseline = [
                await call(client, a.token, probe.method, url, probe.body, probe.query)
                for url in (probe.url, probe.nonexistent_url)
            ]
            seen = answer.text + " " + " ".join(f"{k}: {v}" for k, v in answer.headers.items())
            leaked = [s for s in b.secrets if s.lower() in seen.lower()]
            where = f"{probe.method.upper()} {probe.url} ({probe.path})"
            if not probe.declared:
                allowed = {404, 405}
            elif probe.resolved:
                allowed = {404}
            else:  # a parameter we could not name an object for: anything but success
                allowed = {404, 405, 422}
            if answer.status_code not in allowed:
                failures.append(f"{where}: {answer.status_code} {answer.text[:200]}")
            if leaked:
                failures.append(f"{where}: answer mentions {leaked}")
            if probe.resolved and (answer.status_code, _normalised(answer, probe.url)) != (
                baseline.status_code, _normalised(baseline, probe.nonexistent_url),
            ):  # fmt: skip
                failures.append(f"{where}: differs from a nonexistent id: {answer.text[:200]}")
        assert not failures, "\n".join(failures)

    async with db_pool.acquire() as conn:
        b_after = dict(await conn.fetchrow(B_STATE, other.account_id, int(b.objects["message"])))
    assert b_after == b_before
