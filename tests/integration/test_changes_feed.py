"""/v1/changes over real uvicorn and PostgreSQL: collapse rules, 410 below the floor after
retention, and the gap-free property under many concurrent writers (some rolling back)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest

from mailish.domain.ids import AccountId, BucketNo, new_account_id
from mailish.store import accounts, changes, connecting, feed, tokens
from mailish.store.connecting import Pool
from tests.integration.conftest import RunningApi

Change = tuple[str, str, list[int]]  # (object kind, change, object ids)
EMPTY = {"created": [], "updated": [], "destroyed": []}


@dataclass
class Account:
    id: UUID
    token: str


@pytest.fixture
async def account(db_pool: Pool) -> Account:
    """An account and its token, straight in the store (no mail server needed here)."""
    account_id = new_account_id()
    async with db_pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email=f"{account_id.hex[:8]}@example.test",
            display_name=None, bucket=BucketNo(0), provider=None, settings={},
            auth_kind="password", credentials=b"sealed", key_id="k1",
        )  # fmt: skip
        token = await tokens.issue(conn, account_id=account_id)
    return Account(account_id, token)


@pytest.fixture
async def client(api: RunningApi, account: Account) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {account.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        yield client


async def commit(pool: Pool, account_id: UUID, *items: Change) -> int:
    """One writer transaction, as the sync engine makes them: one modseq, several rows."""
    async with pool.acquire() as conn, conn.transaction():
        modseq = await changes.next_modseq(conn, account_id=account_id)
        for kind, change, ids in items:
            await changes.record(
                conn, account_id=account_id, modseq=modseq, kind=kind, change=change,
                object_ids=ids,
            )  # fmt: skip
    return modseq


async def since(client: httpx.AsyncClient, state: int | str) -> dict[str, Any]:
    response = await client.get("/v1/changes", params={"since": str(state)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_changes_collapse_to_the_net_effect(
    client: httpx.AsyncClient, db_pool: Pool, account: Account
) -> None:
    start = await since(client, 0)
    assert start == {"state": "0", "messages": EMPTY, "folders": EMPTY}
    a = await commit(db_pool, account.id, ("message", "created", [1, 2, 3, 4]),
                     ("folder", "created", [10]))  # fmt: skip
    await commit(db_pool, account.id, ("message", "updated", [1]),
                 ("message", "destroyed", [2, 3]))  # fmt: skip
    c = await commit(db_pool, account.id, ("message", "updated", [3]),  # moved, kept its id
                     ("message", "created", [5, 6]), ("message", "updated", [6]),
                     ("folder", "updated", [10]))  # fmt: skip
    d = await commit(db_pool, account.id, ("message", "destroyed", [5]),
                     ("folder", "destroyed", [11]))  # fmt: skip

    everything = await since(client, 0)
    assert everything["state"] == str(d)
    # 1: created, updated -> created; 2, 5: created and destroyed inside -> omitted;
    # 3: created, destroyed, updated (a move) -> created; 6: created+updated in one commit.
    assert everything["messages"] == {"created": [1, 3, 4, 6], "updated": [], "destroyed": []}
    assert everything["folders"] == {"created": [10], "updated": [], "destroyed": [11]}

    after_a = await since(client, a)
    assert after_a["messages"] == {"created": [6], "updated": [1, 3], "destroyed": [2]}
    assert after_a["folders"] == {"created": [], "updated": [10], "destroyed": [11]}

    after_c = await since(client, c)
    assert after_c["messages"] == {"created": [], "updated": [], "destroyed": [5]}
    assert after_c["folders"] == {"created": [], "updated": [], "destroyed": [11]}

    assert await since(client, d) == {"state": str(d), "messages": EMPTY, "folders": EMPTY}


async def test_malformed_since_is_422(client: httpx.AsyncClient) -> None:
    for bad in ("", "abc", "-1", "1.5", " 1", "²", "9" * 20, "9223372036854775808"):
        response = await client.get("/v1/changes", params={"since": bad})
        assert response.status_code == 422, bad
        assert response.json()["error"] == "invalid_state"


async def test_missing_future_and_unauthenticated(
    api: RunningApi, client: httpx.AsyncClient, db_pool: Pool, account: Account
) -> None:
    missing = await client.get("/v1/changes")
    assert (missing.status_code, missing.json()["error"]) == (422, "invalid_state")
    state = await commit(db_pool, account.id, ("message", "created", [1]))
    future = await client.get("/v1/changes", params={"since": state + 1})
    assert (future.status_code, future.json()["error"]) == (422, "invalid_state")
    async with httpx.AsyncClient(base_url=api.base) as anonymous:
        assert (await anonymous.get("/v1/changes", params={"since": "0"})).status_code == 401


async def test_retention_trims_and_answers_410_below_the_floor(
    client: httpx.AsyncClient, db_pool: Pool, account: Account
) -> None:
    old_a = await commit(db_pool, account.id, ("message", "created", [1, 2]))
    old_b = await commit(db_pool, account.id, ("message", "updated", [1]))
    young = await commit(db_pool, account.id, ("message", "created", [3]),
                         ("message", "destroyed", [2]))  # fmt: skip
    async with db_pool.acquire() as conn:
        assert await changes.trim(conn, account_id=account.id, older_than=dt.timedelta(days=1)) == 0
        await conn.execute(
            "UPDATE changes SET created_at = now() - interval '2 days'"
            " WHERE account_id = $1 AND modseq <= $2",
            account.id, old_b,
        )  # fmt: skip
        floor = await changes.trim(conn, account_id=account.id, older_than=dt.timedelta(days=1))
        assert floor == old_b
        left = await conn.fetchval(
            "SELECT count(*) FROM changes WHERE account_id = $1 AND modseq <= $2", account.id, floor
        )
        assert left == 0
        assert (
            await changes.trim(conn, account_id=account.id, older_than=dt.timedelta(days=1))
            == floor
        )

    for below in (0, old_a):
        gone = await client.get("/v1/changes", params={"since": below})
        assert gone.status_code == 410
        body = gone.json()
        assert body["error"] == "cannot_calculate_changes"
        assert "resync" in body["detail"]
    kept = await since(client, floor)
    assert kept["state"] == str(young)
    assert kept["messages"] == {"created": [3], "updated": [], "destroyed": [2]}


async def test_concurrent_writers_never_leave_a_gap(
    client: httpx.AsyncClient, db_dsn: str, account: Account
) -> None:
    """Writers hold the account lock across sleeps and some roll back, while two readers
    (HTTP and the store function) chase the state. Every answer must hold exactly the
    committed changes in ``(since, state]``, and together they must hold every commit."""
    writers, per_writer = 12, 15
    rng = random.Random(4)
    ids = itertools.count(1)
    committed: dict[int, int] = {}  # object id -> modseq
    rolled_back: set[int] = set()
    reads: list[tuple[int, int, list[int]]] = []  # (since, state, created ids)
    done = asyncio.Event()
    pool = await connecting.connect_pool(db_dsn, min_size=writers + 2, max_size=writers + 2)

    async def write() -> None:
        for _ in range(per_writer):
            object_id = next(ids)
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    await asyncio.sleep(rng.random() * 0.002)  # other work before the lock
                    modseq = await changes.next_modseq(conn, account_id=account.id)
                    await changes.record(
                        conn, account_id=account.id, modseq=modseq, kind="message",
                        change="created", object_ids=[object_id],
                    )  # fmt: skip
                    await asyncio.sleep(rng.random() * 0.003)  # hold the lock a while
                except BaseException:
                    await tx.rollback()
                    raise
                if rng.random() < 0.2:
                    await tx.rollback()
                    rolled_back.add(object_id)
                else:
                    await tx.commit()
                    committed[object_id] = modseq

    async def read_http() -> None:
        state = 0
        while True:
            finished = done.is_set()
            body = await since(client, state)
            reads.append((state, int(body["state"]), body["messages"]["created"]))
            state = int(body["state"])
            if finished:
                return

    async def read_store() -> None:
        state = 0
        while True:
            finished = done.is_set()
            async with pool.acquire() as conn:
                result = await feed.changes_since(
                    conn, account_id=AccountId(account.id), since=state
                )
            assert result is not None
            reads.append((state, result.state, list(result.messages.created)))
            state = result.state
            if finished:
                return

    try:
        readers = [asyncio.create_task(read_http()), asyncio.create_task(read_store())]
        await asyncio.gather(*(write() for _ in range(writers)))
        done.set()
        await asyncio.gather(*readers)
    finally:
        await pool.close()

    assert len(committed) + len(rolled_back) == writers * per_writer
    assert rolled_back and len(reads) > 40
    seen: set[int] = set()
    for low, high, created in reads:
        expected = sorted(i for i, m in committed.items() if low < m <= high)
        assert created == expected, f"since {low} -> {high}"
        seen.update(created)
    assert seen == set(committed)
    assert max(high for _, high, _ in reads) == max(committed.values())
