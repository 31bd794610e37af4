"""The read API over real uvicorn: bearer auth, account progress, folders, isolation."""

from __future__ import annotations

import httpx

from mailish.mail.imap.session import ImapSession
from mailish.store import tokens
from mailish.store.connecting import Pool
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked, RunningApi


async def test_auth_is_required_and_tokens_are_checked(api: RunningApi, linked: Linked) -> None:
    async with httpx.AsyncClient(base_url=api.base) as client:
        missing = await client.get("/v1/account")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        forged = await client.get(
            "/v1/account", headers={"Authorization": "Bearer mlsh_" + "x" * 43}
        )
        assert forged.status_code == 401
        ok = await client.get("/v1/account", headers={"Authorization": f"Bearer {linked.token}"})
        assert ok.status_code == 200
        body = ok.json()
        assert body["email"] == f"{linked.user.name}@example.test"
        assert body["status"] == "active"
        assert set(body["sync"]) == {
            "state", "messages_synced", "messages_total", "folders_synced", "folders_total",
            "last_error",
        }  # fmt: skip


async def test_folders_after_sync_and_revocation(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession
) -> None:
    dovecot.load_maildir(linked.user, 9)
    await linked.sync(db_pool).sync_all(session)
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        body = (await client.get("/v1/folders")).json()
        inbox = next(f for f in body["folders"] if f["role"] == "inbox")
        assert inbox["total"] == 9
        assert inbox["unread"] == 3  # the loader marks 2 of 3 messages seen
        assert int(body["state"]) > 0
        account = (await client.get("/v1/account")).json()
        assert account["sync"]["messages_synced"] == 9
        assert account["sync"]["state"] == "idle" or account["sync"]["state"] == "syncing"
        async with db_pool.acquire() as conn:
            await tokens.revoke_all(conn, account_id=linked.account_id)  # type: ignore[arg-type]
        assert (await client.get("/v1/folders")).status_code == 401
