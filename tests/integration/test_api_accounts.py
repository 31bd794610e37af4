"""Linking over the API, unlinking, and the request limits (real uvicorn, Dovecot, SMTP)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mailish.api.limits import RateLimiter
from mailish.domain.ids import Epoch
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import RunningApi, serve


def body(dovecot: Dovecot, smtp: SmtpServer, user: MailUser, password: str) -> dict[str, object]:
    return {
        "email": f"{user.name}@example.test",
        "username": user.name,
        "password": password,
        "imap": {"host": "localhost", "port": dovecot.imaps_port, "security": "tls"},
        "smtp": {"host": "localhost", "port": smtp.port, "security": "starttls"},
    }


async def test_link_verifies_both_logins_then_unlink_removes_everything(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    mail_user: MailUser,
) -> None:  # fmt: skip
    smtp_server.add_user(mail_user.name, mail_user.password)
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as client:
        wrong = await client.post(
            "/v1/accounts", json=body(dovecot, smtp_server, mail_user, "wrong")
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "auth_failed"
        assert "wrong" not in wrong.text
        unreachable = body(dovecot, smtp_server, mail_user, mail_user.password)
        unreachable["imap"] = {"host": "localhost", "port": 1, "security": "tls"}
        answer = await client.post("/v1/accounts", json=unreachable)
        assert answer.json()["error"] == "unreachable"
        bad = body(dovecot, smtp_server, mail_user, mail_user.password)
        bad["imap"] = {"host": "localhost", "port": dovecot.imaps_port, "security": "bogus"}
        invalid = await client.post("/v1/accounts", json=bad)
        assert invalid.status_code == 422
        assert "imap.security" in invalid.json()["detail"]
        async with db_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM accounts") == 0

        ok = await client.post(
            "/v1/accounts", json=body(dovecot, smtp_server, mail_user, mail_user.password)
        )
        assert ok.status_code == 201, ok.text
        token = ok.json()["token"]
        again = await client.post(
            "/v1/accounts", json=body(dovecot, smtp_server, mail_user, mail_user.password)
        )
        assert again.status_code == 409
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/account", headers=headers)).status_code == 200
        assert (await client.delete("/v1/account", headers=headers)).status_code == 204
        assert (await client.get("/v1/account", headers=headers)).status_code == 401
        async with db_pool.acquire() as conn:
            left = await conn.fetchval(
                "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM api_tokens)"
            )
            stored = await conn.fetchval(
                "SELECT count(*) FROM accounts WHERE credentials IS NOT NULL"
            )
        assert left == 0
        assert stored == 0


async def test_body_size_limit(api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=api.base) as client:
        big = await client.post("/v1/accounts", content=b"x" * (2 << 20))
        assert big.status_code == 413
        assert big.json()["error"] == "too_large"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(40):
                yield b"y" * 65536

        streamed = await client.post("/v1/accounts", content=chunks())
        assert streamed.status_code == 413


async def test_rate_limit_answers_429_with_retry_after(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA
) -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.take(b"k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(b"k", now=0.0) == pytest.approx(0.5)
    assert limiter.take(b"k", now=0.6) == 0.0
    assert limiter.take(b"other", now=0.0) == 0.0
    headers = {"Authorization": "Bearer mlsh_flood"}
    async with (
        serve(db_dsn, keyring, test_ca, api_rate=1.0, api_burst=5) as small,
        httpx.AsyncClient(base_url=small.base, headers=headers) as client,
    ):
        answers = await asyncio.gather(*(client.get("/v1/account") for _ in range(20)))
    limited = [a for a in answers if a.status_code == 429]
    assert limited, "a flood beyond the burst must be limited"
    assert int(limited[0].headers["retry-after"]) >= 1
    assert {a.status_code for a in answers} <= {401, 429}


async def test_reauthorise_after_auth_invalid_resumes_sync(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    mail_user: MailUser, keyring: KeyRing, policy: ConnectionPolicy,
) -> None:  # fmt: skip
    """PUT /v1/account/credentials proves the new login, reactivates the account, and the
    worker (which stopped for good on the refused login) syncs again."""
    smtp_server.add_user(mail_user.name, mail_user.password)
    dovecot.load_maildir(mail_user, 7)
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as client:
        linked = await client.post(
            "/v1/accounts", json=body(dovecot, smtp_server, mail_user, mail_user.password)
        )
        headers = {"Authorization": f"Bearer {linked.json()['token']}"}
        dovecot.set_password(mail_user.name, "rotated-elsewhere")
        worker = Worker(
            pool=db_pool, assigner=StaticAssigner(buckets=64, owner="re", epoch=Epoch(7)),
            keyring=keyring, policy=policy,
            tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=30)),
        )  # fmt: skip
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(20):
                while (await client.get("/v1/account", headers=headers)).json()[
                    "status"
                ] != "auth_invalid":
                    await asyncio.sleep(0.05)
            wrong = await client.put(
                "/v1/account/credentials", json={"password": "nope"}, headers=headers
            )
            assert wrong.status_code == 401
            assert wrong.json()["error"] == "auth_failed"
            smtp_server.add_user(mail_user.name, "rotated-elsewhere")
            fixed = await client.put(
                "/v1/account/credentials", json={"password": "rotated-elsewhere"},
                headers=headers,
            )  # fmt: skip
            assert fixed.status_code == 200, fixed.text
            assert fixed.json() == {"status": "active"}
            async with asyncio.timeout(20):
                while (await client.get("/v1/account", headers=headers)).json()["sync"][
                    "messages_synced"
                ] != 7:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    async with db_pool.acquire() as conn:
        stored = await conn.fetchval("SELECT credentials FROM accounts")
    assert b"rotated-elsewhere" not in bytes(stored)
