"""Modifying operations end to end: API (real uvicorn) → queue → worker → Dovecot."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from mailish.domain.ids import Epoch
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked, RunningApi


@pytest.fixture
async def worker(
    db_pool: Pool, keyring: KeyRing, policy: ConnectionPolicy, linked: Linked
) -> AsyncIterator[Worker]:
    running = Worker(
        pool=db_pool,
        assigner=StaticAssigner(buckets=4, owner="w2", epoch=Epoch(2)),
        keyring=keyring,
        policy=policy,
        tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=30)),
    )
    task = asyncio.create_task(running.run())
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def server(dovecot: Dovecot, linked: Linked, ca: LocalCA) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    client = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=context)
    client.login(linked.user.name, linked.user.password)
    return client


async def until_done(client: httpx.AsyncClient, op: int, limit: float = 15) -> dict[str, object]:
    body: dict[str, object] = {}
    try:
        return await _until_done(client, op, limit)
    except TimeoutError:
        body = (await client.get(f"/v1/operations/{op}")).json()
        raise AssertionError(f"operation {op} did not finish: {body}") from None


async def _until_done(client: httpx.AsyncClient, op: int, limit: float) -> dict[str, object]:
    async with asyncio.timeout(limit):
        while True:
            body = (await client.get(f"/v1/operations/{op}")).json()
            if body["status"] in ("done", "failed"):
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)


async def message_row(pool: Pool, linked: Linked, subject: str) -> dict[str, object]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT m.id, m.uid, f.path, m.seen FROM messages m JOIN folders f ON f.id=m.folder_id"
            " WHERE m.account_id=$1 AND m.subject=$2 AND m.expunged_at IS NULL",
            linked.account_id, subject,
        )  # fmt: skip
    return dict(row) if row else {}


async def test_operations_reach_the_server(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, test_ca: LocalCA,
    worker: Worker,
) -> None:  # fmt: skip
    for i in range(3):
        dovecot.deliver(linked.user, f"Subject: op{i}\r\n\r\nbody\r\n".encode())
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        async with asyncio.timeout(20):
            while not (await message_row(db_pool, linked, "op2")):
                await asyncio.sleep(0.05)
        folders = {
            f["role"] or f["path"]: f["id"]
            for f in (await client.get("/v1/folders")).json()["folders"]
        }

        # mark read
        m0 = await message_row(db_pool, linked, "op0")
        answer = await client.patch(f"/v1/messages/{m0['id']}", json={"seen": True})
        assert answer.status_code == 202
        assert (await message_row(db_pool, linked, "op0"))["seen"] is True  # optimistic
        assert (await until_done(client, answer.json()["operation_id"]))["status"] == "done"
        imap = server(dovecot, linked, test_ca)
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("FETCH", str(m0["uid"]), "(FLAGS)")
        assert b"\\Seen" in data[0]

        # move keeps the id
        m1 = await message_row(db_pool, linked, "op1")
        answer = await client.patch(
            f"/v1/messages/{m1['id']}", json={"folder_id": folders["archive"]}
        )
        assert (await until_done(client, answer.json()["operation_id"]))["status"] == "done"
        moved = await message_row(db_pool, linked, "op1")
        assert moved["id"] == m1["id"]
        assert moved["path"] == "Archive"
        assert int(moved["uid"]) > 0  # type: ignore[call-overload]
        imap.select("Archive", readonly=True)
        _, found = imap.uid("SEARCH", "SUBJECT", "op1")
        assert found[0].split() == [str(moved["uid"]).encode()]

        # delete → Trash; delete inside Trash → expunged
        answer = await client.delete(f"/v1/messages/{m1['id']}")
        assert (await until_done(client, answer.json()["operation_id"]))["status"] == "done"
        assert (await message_row(db_pool, linked, "op1"))["path"] == "Trash"
        answer = await client.delete(f"/v1/messages/{m1['id']}")
        assert (await until_done(client, answer.json()["operation_id"]))["status"] == "done"
        assert await message_row(db_pool, linked, "op1") == {}
        imap.select("Trash", readonly=True)
        assert imap.uid("SEARCH", "ALL")[1][0] == b""

        # folders: create, rename, delete
        created = await client.post("/v1/folders", json={"name": "Счета"})
        assert created.status_code == 202
        assert (await until_done(client, created.json()["operation_id"]))["status"] == "done"
        renamed = await client.patch(
            f"/v1/folders/{created.json()['folder_id']}", json={"name": "Bills"}
        )
        assert (await until_done(client, renamed.json()["operation_id"]))["status"] == "done"
        names = b" ".join(imap.list()[1])
        assert b'"Bills"' in names or b" Bills" in names
        gone = await client.delete(f"/v1/folders/{created.json()['folder_id']}")
        assert (await until_done(client, gone.json()["operation_id"]))["status"] == "done"
        assert b"Bills" not in b" ".join(imap.list()[1])
        imap.logout()

        # an operation the server refuses is reverted and marked failed: 150 Cyrillic
        # letters pass our limit (200 characters) but not Dovecot's (its Maildir stores the
        # name as one directory of 255 bytes at most). A name taken on the server would not
        # do: the worker hears of it (NOTIFY) and the API then refuses the rename itself.
        victim = await client.post("/v1/folders", json={"name": "Mine"})
        await until_done(client, victim.json()["operation_id"])
        refused = await client.patch(
            f"/v1/folders/{victim.json()['folder_id']}", json={"name": "Я" * 150}
        )
        assert refused.status_code == 202, refused.text
        result = await until_done(client, refused.json()["operation_id"])
        assert result["status"] == "failed"
        assert result["error"]
        paths = {f["path"] for f in (await client.get("/v1/folders")).json()["folders"]}
        assert "Mine" in paths

        # another account's ids are unknown here
        assert (await client.patch("/v1/messages/999999", json={"seen": True})).status_code == 404
        assert (await client.get("/v1/operations/999999")).status_code == 404
