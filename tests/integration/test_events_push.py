"""Live changes: the SSE stream, device pushes from the worker's Pusher, subscriptions, and
one LISTEN connection per api process. Real PostgreSQL, uvicorn, Dovecot, and a real HTTP
server standing in for the push service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI

from mailish.api import events
from mailish.api.app import create_app
from mailish.api.push import endpoint_problem
from mailish.config import load_settings
from mailish.mail.credentials import KeyRing
from mailish.store import changes, push_subscriptions
from mailish.store.connecting import Pool
from mailish.worker.pushing import Outcome, Pusher, PushTuning
from mailish.worker.supervising import Backoff
from tests.harness.dovecot import Dovecot
from tests.harness.push_receiver import Receiver, serve
from tests.integration.conftest import Linked

NEWEST_CREATED = """
SELECT max(modseq) FROM changes
WHERE account_id = $1 AND object_kind = 'message' AND change = 'created'
"""
LISTENERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1
"""


@dataclass
class Served:
    base: str
    app: FastAPI

    @property
    def hub(self) -> events.Hub:
        hub: events.Hub = self.app.state.mailish_events
        return hub


@pytest.fixture
async def served(db_dsn: str, keyring: KeyRing) -> AsyncIterator[Served]:
    """The real app (dev allowance on, so loopback push endpoints are accepted); unlike the
    shared ``api`` fixture it exposes the app, to look at the process's one listener."""
    settings = load_settings(allow_private_hosts=True, api_burst=1000)
    app = create_app(settings, dsn=db_dsn, keyring=keyring)
    async for base in serve(app):
        yield Served(base, app)


@contextlib.asynccontextmanager
async def pusher_running(
    pool: Pool, dsn: str, owns: Callable[[UUID], bool]
) -> AsyncIterator[Pusher]:
    async with httpx.AsyncClient() as http:
        pusher = Pusher(
            pool=pool, dsn=dsn, http=http, owns=owns, allow_private_hosts=True,
            tuning=PushTuning(backoff=Backoff(initial=0.05, maximum=0.1)),
        )  # fmt: skip
        task = asyncio.create_task(pusher.run())
        try:
            await asyncio.wait_for(pusher.listener.listening.wait(), 5)
            yield pusher
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass
class Stream:
    """An SSE client: every ``data:`` state with its arrival time, and the comments."""

    states: asyncio.Queue[tuple[float, int]] = field(default_factory=asyncio.Queue)
    comments: int = 0


@contextlib.asynccontextmanager
async def sse(base: str, token: str) -> AsyncIterator[Stream]:
    stream = Stream()
    opened = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(5.0, read=30.0)) as client,
            client.stream("GET", "/v1/events", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            opened.set()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    stream.states.put_nowait((time.monotonic(), int(json.loads(line[6:])["state"])))
                elif line.startswith(":"):
                    stream.comments += 1

    task = asyncio.create_task(read())
    try:
        await asyncio.wait({task, asyncio.create_task(opened.wait())}, timeout=5,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if task.done():
            task.result()
        yield stream
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def next_state(stream: Stream, limit: float = 5.0) -> tuple[float, int]:
    return await asyncio.wait_for(stream.states.get(), limit)


async def until_state(stream: Stream, at_least: int, limit: float) -> float:
    """When the stream first reported a state >= ``at_least``."""
    async with asyncio.timeout(limit):
        while True:
            arrived, state = await stream.states.get()
            if state >= at_least:
                return arrived


async def commit(pool: Pool, account_id: Any, kind: str, change: str, ids: list[int]) -> int:
    async with pool.acquire() as conn, conn.transaction():
        modseq = await changes.next_modseq(conn, account_id=account_id)
        await changes.record(conn, account_id=account_id, modseq=modseq, kind=kind,
                             change=change, object_ids=ids)  # fmt: skip
    return modseq


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.02)


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


async def test_sse_reports_each_commit_within_one_second(
    served: Served, db_pool: Pool, linked: Linked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.2)
    async with sse(served.base, linked.token) as stream:
        _, first = await next_state(stream)
        async with db_pool.acquire() as conn:
            assert first == await conn.fetchval(
                "SELECT modseq FROM accounts WHERE id = $1", linked.account_id
            )
        latencies = []
        for i in range(10):
            started = time.monotonic()  # includes the commit itself: an upper bound
            state = await commit(db_pool, linked.account_id, "message", "updated", [i])
            arrived, seen = await next_state(stream, 1.0)
            assert seen == state
            latencies.append(arrived - started)
        await asyncio.sleep(0.5)
        assert stream.comments >= 1  # heartbeats keep idle streams open
        print(f"commit to SSE event: {ms(latencies)}")
        assert max(latencies) < 1.0
    await eventually(lambda: _true(served.hub.streams() == 0))


async def _true(value: bool) -> bool:
    return value


async def test_new_mail_reaches_sse_and_devices_within_two_seconds(
    served: Served, receiver: Receiver, db_pool: Pool, db_dsn: str, dovecot: Dovecot,
    linked: Linked,
) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=served.base, headers=headers) as client:
        for device in ("phone", "gone", "flaky"):
            subscribed = await client.post(
                "/v1/push/subscriptions",
                json={"device_id": device, "endpoint": f"{receiver.base}/push/{device}"},
            )
            assert subscribed.status_code == 201, subscribed.text
    receiver.answers = {"/push/gone": [410], "/push/flaky": [503, 502]}
    dovecot.load_maildir(linked.user, 3)
    sync = linked.sync(db_pool, poll_interval=30.0)
    sync_task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.synced.wait(), 20)
        async with (
            pusher_running(db_pool, db_dsn, lambda a: a == linked.account_id),
            sse(served.base, linked.token) as stream,
        ):
            _, before = await next_state(stream)
            sse_latency, push_latency = [], []
            for i in range(3):
                raw = f"From: a@example.org\r\nSubject: fresh {i}\r\n\r\nbody {i}\r\n".encode()
                await asyncio.to_thread(dovecot.deliver, linked.user, raw)
                delivered = time.monotonic()
                await receiver.wait_for(lambda n=i: len(receiver.to("/push/phone")) > n, 2.0)
                push_latency.append(receiver.times("/push/phone")[-1] - delivered)
                assert receiver.to("/push/phone")[-1]["reason"] == "new_mail"
                async with db_pool.acquire() as conn:
                    stored = await conn.fetchval(NEWEST_CREATED, linked.account_id)
                sse_latency.append(await until_state(stream, stored, 2.0) - delivered)
                async with httpx.AsyncClient(base_url=served.base, headers=headers) as client:
                    body = (await client.get("/v1/changes", params={"since": before})).json()
                assert len(body["messages"]["created"]) == 1
                before = int(body["state"])
                await asyncio.sleep(1.0)  # past the pusher's cooldown: one push per message
            print(
                f"delivery to SSE: {ms(sse_latency)}; delivery to device push: {ms(push_latency)}"
            )
            assert max(sse_latency) < 2.0 and max(push_latency) < 2.0

            # A flag change, or a created row that is no unread inbox message, is not new
            # mail: the SSE stream moves on, devices hear nothing.
            pushes = len(receiver.posts)
            await commit(db_pool, linked.account_id, "message", "updated", [1])
            state = await commit(db_pool, linked.account_id, "message", "created", [10**12])
            await until_state(stream, state, 1.0)
            await asyncio.sleep(0.5)
            assert len(receiver.posts) == pushes
    finally:
        sync_task.cancel()
        await asyncio.gather(sync_task, return_exceptions=True)

    phone = receiver.to("/push/phone")
    assert [p["state"] for p in phone] == sorted({p["state"] for p in phone})
    assert phone[0]["account_id"] == str(linked.account_id)
    assert len(receiver.to("/push/gone")) == 1  # 410 once, then never again
    assert len(receiver.to("/push/flaky")) == 5  # 503, 502, then delivered each time
    async with db_pool.acquire() as conn:
        left = await push_subscriptions.list_for(conn, account_id=linked.account_id)  # type: ignore[arg-type]
    assert [(s.device_id, s.failures) for s in left] == [("flaky", 0), ("phone", 0)]


async def test_reauth_required_is_the_last_push(
    served: Served, receiver: Receiver, db_pool: Pool, db_dsn: str, linked: Linked
) -> None:
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=served.base, headers=headers) as client:
        for device in ("phone", "tablet"):
            endpoint = f"{receiver.base}/push/{device}".replace("127.0.0.1", "localhost")
            response = await client.post(
                "/v1/push/subscriptions", json={"device_id": device, "endpoint": endpoint}
            )
            assert response.status_code == 201
        receiver.answers = {"/push/tablet": [500]}  # retried, then delivered
        async with httpx.AsyncClient() as http:
            pusher = Pusher(pool=db_pool, dsn=db_dsn, http=http, owns=lambda _: True,
                            allow_private_hosts=True)  # fmt: skip
            outcomes = await pusher.reauth_required(linked.account_id)  # type: ignore[arg-type]
        assert outcomes == {"phone": Outcome.DELIVERED, "tablet": Outcome.DELIVERED}
        assert [b["reason"] for b in receiver.to("/push/phone")] == ["reauth_required"]
        assert [b["reason"] for b in receiver.to("/push/tablet")] == ["reauth_required"] * 2
        # Sent to the address that was checked, under the name the device registered.
        assert receiver.hosts == {
            receiver.base.removeprefix("http://").replace("127.0.0.1", "localhost")
        }
        async with db_pool.acquire() as conn:
            assert await push_subscriptions.list_for(conn, account_id=linked.account_id) == []  # type: ignore[arg-type]
        assert (await client.delete("/v1/push/subscriptions/phone")).status_code == 404


async def test_subscription_api(served: Served, linked: Linked) -> None:
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=served.base, headers=headers) as client:
        url = "/v1/push/subscriptions"
        first = await client.post(url, json={"device_id": "d", "endpoint": "https://a.example/x"})
        assert first.status_code == 201
        again = await client.post(url, json={"device_id": "d", "endpoint": "https://b.example/y"})
        assert again.status_code == 200
        assert again.json() == {"device_id": "d", "endpoint": "https://b.example/y"}
        for bad in ("ftp://a.example/", "https://", "https://u:p@a.example/", "not a url"):
            refused = await client.post(url, json={"device_id": "e", "endpoint": bad})
            assert refused.status_code == 422, bad
            assert refused.json()["error"] == "invalid_endpoint"
        for n in range(19):
            ok = await client.post(
                url, json={"device_id": f"n{n}", "endpoint": "https://a.example/"}
            )
            assert ok.status_code == 201
        full = await client.post(url, json={"device_id": "x", "endpoint": "https://a.example/"})
        assert (full.status_code, full.json()["error"]) == (409, "too_many_devices")
        assert (await client.delete(f"{url}/d")).status_code == 204
        gone = await client.delete(f"{url}/d")
        assert (gone.status_code, gone.json()["error"]) == (404, "not_found")
    async with httpx.AsyncClient(base_url=served.base) as anonymous:
        assert (await anonymous.delete(f"{url}/n1")).status_code == 401


@pytest.mark.parametrize(
    ("url", "allowed_in_production"),
    [
        ("https://push.example.com/d/1?k=v", True),
        ("https://203.0.113.9/x", False),  # documentation range: not global
        ("https://8.8.8.8/x", True),
        ("http://push.example.com/d", False),
        ("https://localhost/x", False),
        ("https://127.0.0.1:8443/x", False),
        ("https://[::1]/x", False),
        ("https://10.1.2.3/x", False),
        ("https://push.example.com:99999/x", False),
    ],
)
def test_endpoint_rules(url: str, allowed_in_production: bool) -> None:
    assert (endpoint_problem(url, allow_private=False) is None) == allowed_in_production
    if "99999" not in url:
        assert endpoint_problem(url, allow_private=True) is None


async def test_one_listen_connection_per_process_and_reconnect(
    served: Served, db_pool: Pool, linked: Linked
) -> None:
    listener = served.app.state.mailish_listener
    await asyncio.wait_for(listener.listening.wait(), 5)
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(sse(served.base, linked.token)) for _ in range(6)
        ]
        for stream in streams:
            await next_state(stream)
        assert served.hub.streams(linked.account_id) == 6  # type: ignore[arg-type]
        async with db_pool.acquire() as conn:
            assert await conn.fetchval(LISTENERS, events.LISTENER_NAME) == 1
            backends = await conn.fetch(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN %'"
            )
        assert len(backends) == 1
        state = await commit(db_pool, linked.account_id, "folder", "updated", [1])
        for stream in streams:
            assert (await next_state(stream, 1.0))[1] == state

        # PostgreSQL drops the listener; a commit lands while it is away. Every stream still
        # gets the state: the reconnect re-reads it, since the notification is lost.
        async with db_pool.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", backends[0]["pid"])
        state = await commit(db_pool, linked.account_id, "folder", "updated", [1])
        for stream in streams:
            assert await until_state(stream, state, 3.0)
        assert listener.connects == 2
        async with db_pool.acquire() as conn:
            assert await conn.fetchval(LISTENERS, events.LISTENER_NAME) == 1
    await eventually(lambda: _true(served.hub.streams() == 0))
