"""Sending end to end: API (real uvicorn) → outbox → worker → aiosmtpd, Sent copy in Dovecot."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvicorn

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import Fenced
from mailish.domain.ids import Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail import smtp
from mailish.mail.credentials import KeyRing
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import claims
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from mailish.worker.sending import Sender
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.smtp import Received, SmtpServer
from tests.integration.conftest import RunningApi, serve


@pytest.fixture
async def account(
    db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser,
    keyring: KeyRing, policy: ConnectionPolicy,
) -> AsyncIterator[dict[str, object]]:  # fmt: skip
    smtp_server.add_user(mail_user.name, mail_user.password)
    linked = await link(
        db_pool,
        LinkRequest(
            email=f"{mail_user.name}@example.test", password=mail_user.password,
            username=mail_user.name, display_name="Алиса Тестова",
            imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS),
            smtp=Endpoint("localhost", smtp_server.port, Security.STARTTLS),
        ),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    worker = Worker(
        pool=db_pool,
        assigner=StaticAssigner(buckets=4, owner="sender", epoch=Epoch(3)),
        keyring=keyring,
        policy=policy,
        tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=30)),
    )
    task = asyncio.create_task(worker.run())
    yield {"token": linked.token, "account_id": linked.account_id, "user": mail_user}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    smtp_server.remove_user(mail_user.name)


async def settle(client: httpx.AsyncClient, op: str, limit: float = 20) -> dict[str, object]:
    async with asyncio.timeout(limit):
        while True:
            body: dict[str, object] = (await client.get(f"/v1/outbox/{op}")).json()
            assert body["status"] != "unknown", body  # shown as sending until resolved
            if body["status"] not in ("queued", "sending"):
                return body
            await asyncio.sleep(0.05)


def client_for(api: RunningApi, token: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=api.base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def test_send_delivers_exact_bytes_files_sent_copy_once_and_is_idempotent(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    account: dict[str, object],
) -> None:  # fmt: skip
    user = account["user"]
    assert isinstance(user, MailUser)
    async with client_for(api, account["token"]) as client:
        upload = await client.post(
            "/v1/attachments", files={"file": ("отчёт.pdf", b"%PDF-1.4 test", "application/pdf")}
        )
        assert upload.status_code == 201
        body = {
            "to": ["friend@example.org"], "cc": ["copy@example.org"],
            "bcc": ["hidden@example.org"], "subject": "Квартальный отчёт",
            "text": "Привет!", "html": "<p>Привет!</p>",
            "attachment_ids": [upload.json()["attachment_id"]],
        }  # fmt: skip
        headers = {"Idempotency-Key": "send-1"}
        first, second = await asyncio.gather(
            client.post("/v1/send", json=body, headers=headers),
            client.post("/v1/send", json=body, headers=headers),
        )
        assert first.status_code == second.status_code == 202
        assert first.json() == second.json()
        other = await client.post("/v1/send", json={**body, "subject": "x"}, headers=headers)
        assert other.status_code == 409
        result = await settle(client, first.json()["operation_id"])
        assert result["status"] == "sent", result
        [received] = smtp_server.received_by(user.name)
        assert sorted(received.rcpt_tos) == sorted(
            ["friend@example.org", "copy@example.org", "hidden@example.org"]
        )
        parsed = email.message_from_bytes(received.data, policy=email.policy.default)
        assert str(parsed["Message-ID"]).strip("<>") == first.json()["message_id"]
        assert "Bcc" not in parsed
        assert b"hidden@example.org" not in received.data
        assert str(parsed["Subject"]) == "Квартальный отчёт"
        async with db_pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT b.data FROM outbox o JOIN message_blobs b ON b.sha256 = o.raw_sha256 "
                "AND b.account_id = o.account_id WHERE o.id = $1",
                first.json()["operation_id"],  # type: ignore[arg-type]
            )
        assert bytes(stored) == received.data  # exactly the composed bytes
        # the Sent copy: appended once, seen, and synced into the Sent folder
        sent_uids = dovecot.doveadm(
            "search", "-u", user.name, "mailbox", "Sent", "HEADER", "Message-ID",
            str(parsed["Message-ID"]).strip("<>"),
        ).split()  # fmt: skip
        assert len(sent_uids) == 2  # doveadm prints "<guid> <uid>" for one message


@pytest.mark.parametrize(
    ("to", "sender_blocked", "status", "error_code"),
    [
        (["reject-me@example.org"], False, "failed", "550"),
        (["ok@example.org", "reject-me@example.org"], False, "partially_sent", None),
        (["tempfail@example.org"], False, "queued", "451"),
        (["ok@example.org"], True, "failed", "554"),
    ],
)
async def test_reject_paths(
    api: RunningApi, smtp_server: SmtpServer, account: dict[str, object], to: list[str],
    sender_blocked: bool, status: str, error_code: str | None,
) -> None:  # fmt: skip
    user = account["user"]
    assert isinstance(user, MailUser)
    async with client_for(api, account["token"]) as client:
        subject = "[test-reject-554]" if sender_blocked else "s"  # the test server's 554 trigger
        answer = await client.post(
            "/v1/send", json={"to": to, "subject": subject, "text": "t"},
            headers={"Idempotency-Key": f"k-{status}-{sender_blocked}"},
        )  # fmt: skip
        op = answer.json()["operation_id"]
        if status == "queued":  # a 4xx is retried later: wait for the first attempt's error
            async with asyncio.timeout(20):
                while not (body := (await client.get(f"/v1/outbox/{op}")).json())["error"]:
                    await asyncio.sleep(0.05)
        else:
            body = await settle(client, op)
        assert body["status"] == status, body
        if error_code:
            assert error_code in str(body["error"])
        if status == "partially_sent":
            assert list(body["refused"]) == ["reject-me@example.org"]
            [received] = smtp_server.received_by(user.name)
            assert received.rcpt_tos == ["ok@example.org"]


async def test_a_refused_smtp_login_keeps_the_mail_and_asks_for_new_credentials(
    api: RunningApi, smtp_server: SmtpServer, account: dict[str, object]
) -> None:
    """The password changed at the provider while the IMAP session lived on: the send's SMTP
    login is refused. The mail is not at fault, so it stays queued; the account becomes
    auth_invalid; once the user signs in again it goes out, once."""
    user = account["user"]
    assert isinstance(user, MailUser)
    smtp_server.add_user(user.name, "changed-elsewhere")
    async with client_for(api, account["token"]) as client:
        answer = await client.post(
            "/v1/send", json={"to": ["friend@example.org"], "subject": "kept", "text": "t"},
            headers={"Idempotency-Key": "refused-login"},
        )  # fmt: skip
        op = answer.json()["operation_id"]
        async with asyncio.timeout(20):
            while (await client.get("/v1/account")).json()["status"] != "auth_invalid":
                await asyncio.sleep(0.05)
        body = (await client.get(f"/v1/outbox/{op}")).json()
        assert body["status"] == "queued" and "login refused" in str(body["error"]), body
        assert smtp_server.received_by(user.name) == []
        smtp_server.add_user(user.name, user.password)  # the user fixes it at the provider
        fixed = await client.put("/v1/account/credentials", json={"password": user.password})
        assert fixed.status_code == 200, fixed.text
        body = await settle(client, op)
    assert body["status"] == "sent", body
    assert len(smtp_server.received_by(user.name)) == 1


async def test_size_rejection_552(
    api: RunningApi, smtp_server: SmtpServer, account: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(smtp_server, "data_size_limit", 200)
    async with client_for(api, account["token"]) as client:
        answer = await client.post(
            "/v1/send", json={"to": ["a@example.org"], "subject": "big", "text": "x" * 2000},
            headers={"Idempotency-Key": "big"},
        )  # fmt: skip
        body = await settle(client, answer.json()["operation_id"])
    assert body["status"] == "failed"
    assert "552" in str(body["error"])


async def test_ambiguous_ack_resolved_by_the_providers_sent_copy(
    api: RunningApi, dovecot: Dovecot, smtp_server: SmtpServer, account: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The server takes the message, files it in Sent (as Gmail does) and drops the line
    before its 250. mailish must find it in Sent and not send it again."""
    user = account["user"]
    assert isinstance(user, MailUser)
    original = smtp_server._record

    def record_and_file(message: Received) -> int:
        dovecot.deliver(user, message.data, folder="Sent", flags=["\\Seen"])
        return original(message)

    monkeypatch.setattr(smtp_server, "_record", record_and_file)
    monkeypatch.setattr(smtp_server, "drop_after_data", True)
    async with client_for(api, account["token"]) as client:
        answer = await client.post(
            "/v1/send", json={"to": ["a@example.org"], "subject": "once", "text": "x"},
            headers={"Idempotency-Key": "once"},
        )  # fmt: skip
        body = await settle(client, answer.json()["operation_id"], limit=40)
    assert body["status"] == "sent", body
    assert len(smtp_server.received_by(user.name)) == 1
    copies = dovecot.doveadm("search", "-u", user.name, "mailbox", "Sent", "SUBJECT", "once")
    assert len(copies.split()) == 2  # one message: the provider's copy, none appended


async def test_ambiguous_ack_without_a_sent_copy_is_not_sent_twice(
    api: RunningApi, dovecot: Dovecot, smtp_server: SmtpServer, account: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The server takes the message and drops the line before its 250, and files no copy:
    nobody knows whether it went out, so it is not sent again (RFC 1047); the user is told."""
    user = account["user"]
    assert isinstance(user, MailUser)
    monkeypatch.setattr(smtp_server, "drop_after_data", True)
    async with client_for(api, account["token"]) as client:
        answer = await client.post(
            "/v1/send", json={"to": ["a@example.org"], "subject": "maybe", "text": "x"},
            headers={"Idempotency-Key": "maybe"},
        )  # fmt: skip
        body = await settle(client, answer.json()["operation_id"], limit=40)
    assert body["status"] == "failed", body
    assert str(body["error"]).startswith("outcome unknown")
    assert len(smtp_server.received_by(user.name)) == 1
    found = dovecot.doveadm("search", "-u", user.name, "mailbox", "Sent", "SUBJECT", "maybe")
    assert found.split() == []


async def test_undo_within_the_window_sends_nothing(
    api: RunningApi, smtp_server: SmtpServer, account: dict[str, object]
) -> None:
    user = account["user"]
    assert isinstance(user, MailUser)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat()
    async with client_for(api, account["token"]) as client:
        answer = await client.post(
            "/v1/send", json={"to": ["a@example.org"], "text": "x", "send_at": later},
            headers={"Idempotency-Key": "undo"},
        )  # fmt: skip
        op = answer.json()["operation_id"]
        assert (await client.delete(f"/v1/outbox/{op}")).status_code == 204
        assert (await client.get(f"/v1/outbox/{op}")).json()["status"] == "cancelled"
        assert (await client.delete(f"/v1/outbox/{op}")).status_code == 409
    await asyncio.sleep(0.5)
    assert smtp_server.received_by(user.name) == []


async def test_validation_names_the_field(api: RunningApi, account: dict[str, object]) -> None:
    async with client_for(api, account["token"]) as client:
        missing_key = await client.post("/v1/send", json={"to": ["a@example.org"]})
        assert missing_key.status_code == 422
        assert "Idempotency-Key" in missing_key.json()["detail"]
        bad = await client.post(
            "/v1/send", json={"to": ["a@example.org", "not an address"], "text": "x"},
            headers={"Idempotency-Key": "bad"},
        )  # fmt: skip
        assert bad.status_code == 422
        assert "to[1]" in bad.json()["detail"]
        nobody = await client.post("/v1/send", json={"text": "x"}, headers={"Idempotency-Key": "n"})
        assert nobody.status_code == 422


async def test_a_fenced_worker_sends_nothing(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    account: dict[str, object], policy: ConnectionPolicy,
) -> None:  # fmt: skip
    """A worker whose bucket was taken over (it was paused) cannot claim the outbox row."""
    user = account["user"]
    assert isinstance(user, MailUser)
    async with db_pool.acquire() as conn:
        bucket = await conn.fetchval(
            "SELECT bucket FROM accounts WHERE id=$1", account["account_id"]
        )
        stale = BucketLease(bucket, "paused-worker", Epoch(1))
        await claims.claim(conn, BucketLease(bucket, "successor", Epoch(99)))
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)).isoformat()
    async with client_for(api, account["token"]) as client:
        await client.post(
            "/v1/send", json={"to": ["a@example.org"], "text": "x", "send_at": later},
            headers={"Idempotency-Key": "fenced"},
        )  # fmt: skip
    await asyncio.sleep(0.6)
    settings = smtp.SmtpSettings(
        Endpoint("localhost", smtp_server.port, Security.STARTTLS),
        ca_files=policy.ca_files,
        allow_private_hosts=True,
    )
    conn = await ImapConnection.open(
        ImapSettings(
            Endpoint("localhost", dovecot.imaps_port, Security.TLS),
            ca_files=policy.ca_files, allow_private_hosts=True,
        )
    )  # fmt: skip
    try:
        await conn.login(PasswordLogin(user.name, user.password))
        sender = Sender(
            ImapSession(conn), db_pool, stale, account["account_id"],  # type: ignore[arg-type]
            settings, PasswordLogin(user.name, user.password),
        )  # fmt: skip
        with pytest.raises(Fenced):
            await sender.send_due()
    finally:
        await conn.logout()
    assert smtp_server.received_by(user.name) == []


async def test_draft_created_updated_twice_and_sent(
    api: RunningApi, dovecot: Dovecot, smtp_server: SmtpServer, account: dict[str, object]
) -> None:
    """Exactly one message in Sent and none in Drafts at the end."""
    user = account["user"]
    assert isinstance(user, MailUser)

    def count(folder: str, draft_id: str) -> int:
        found = dovecot.doveadm(
            "search", "-u", user.name, "mailbox", folder, "HEADER", "Message-ID", draft_id
        )
        return len(found.split()) // 2

    async with client_for(api, account["token"]) as client:
        created = await client.post("/v1/drafts", json={"subject": "draft v1", "text": "1"})
        assert created.status_code == 201
        draft_id = created.json()["draft_id"]
        async with asyncio.timeout(20):
            while count("Drafts", draft_id) != 1:
                await asyncio.sleep(0.05)
        for version in (2, 3):
            updated = await client.put(
                f"/v1/drafts/{draft_id}",
                json={"to": ["friend@example.org"], "subject": f"draft v{version}", "text": "x"},
            )
            assert updated.status_code == 202
            assert updated.json()["draft_id"] == draft_id
        sent = await client.post(f"/v1/drafts/{draft_id}/send")
        assert sent.status_code == 202
        assert (await settle(client, sent.json()["operation_id"]))["status"] == "sent"
        async with asyncio.timeout(20):
            while count("Drafts", draft_id) or count("Sent", draft_id) != 1:
                await asyncio.sleep(0.05)
        [received] = smtp_server.received_by(user.name)
        assert b"Subject: draft v3" in received.data
        assert (await client.post(f"/v1/drafts/{draft_id}/send")).status_code == 404
        gone = await client.post("/v1/drafts", json={"subject": "to delete"})
        assert (await client.delete(f"/v1/drafts/{gone.json()['draft_id']}")).status_code == 202
        assert (await client.delete(f"/v1/drafts/{gone.json()['draft_id']}")).status_code == 404


async def test_blocked_sender_553(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    keyring: KeyRing, policy: ConnectionPolicy,
) -> None:  # fmt: skip
    """The test server refuses MAIL FROM addresses starting with "blocked" (553)."""
    user = dovecot.add_user()
    smtp_server.add_user(user.name, user.password)
    linked = await link(
        db_pool,
        LinkRequest(
            email=f"blocked-{user.name}@example.test", password=user.password,
            username=user.name, imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS),
            smtp=Endpoint("localhost", smtp_server.port, Security.STARTTLS),
        ),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    worker = Worker(
        pool=db_pool, assigner=StaticAssigner(buckets=4, owner="w553", epoch=Epoch(5)),
        keyring=keyring, policy=policy,
        tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=30)),
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        async with client_for(api, linked.token) as client:
            answer = await client.post(
                "/v1/send", json={"to": ["a@example.org"], "text": "x"},
                headers={"Idempotency-Key": "553"},
            )  # fmt: skip
            body = await settle(client, answer.json()["operation_id"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert body["status"] == "failed"
    assert "553" in str(body["error"])


Verdict = Callable[[dict[str, object]], Awaitable[bool]]


@contextlib.asynccontextmanager
async def check_service(verdict: Verdict) -> AsyncIterator[str]:
    """An operator's pre-send check service on loopback HTTP; yields its URL. It allows a
    send when ``verdict(request)`` says so, and refuses it as "looks like spam" otherwise."""

    async def check_app(scope, receive, send):  # type: ignore[no-untyped-def]
        message = await receive()
        allow = await verdict(json.loads(message.get("body", b"{}")))
        body = json.dumps({"allow": allow, "reason": "looks like spam"}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(check_app, log_config=None, lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/check"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_presend_check_service(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA, account: dict[str, object]
) -> None:
    """A configured check service sees metadata (never the body) and can refuse a send."""
    seen: list[dict[str, object]] = []

    async def verdict(request: dict[str, object]) -> bool:
        seen.append(request)
        return "blocked@example.org" not in request["recipients"]  # type: ignore[operator]

    async with (
        check_service(verdict) as url,
        serve(db_dsn, keyring, test_ca, presend_check_url=url) as api,
        client_for(api, account["token"]) as client,
    ):
        refused = await client.post(
            "/v1/send", json={"to": ["blocked@example.org"], "text": "secret body"},
            headers={"Idempotency-Key": "spam"},
        )  # fmt: skip
        allowed = await client.post(
            "/v1/send", json={"to": ["fine@example.org"], "text": "secret body"},
            headers={"Idempotency-Key": "ham"},
        )  # fmt: skip
        # A draft is sent through the same check (it used to skip it).
        spam_draft = (await client.post("/v1/drafts", json={
            "to": ["blocked@example.org"], "text": "secret body",
        })).json()["draft_id"]  # fmt: skip
        refused_draft = await client.post(f"/v1/drafts/{spam_draft}/send")
        kept = await client.put(
            f"/v1/drafts/{spam_draft}", json={"to": ["fine@example.org"], "text": "edited"}
        )
        allowed_draft = await client.post(f"/v1/drafts/{spam_draft}/send")
    assert refused.status_code == 422
    assert refused.json()["detail"] == "looks like spam"
    assert allowed.status_code == 202
    assert refused_draft.status_code == 422, refused_draft.text
    assert refused_draft.json()["detail"] == "looks like spam"
    assert kept.status_code == 202  # the refused draft is still there to be edited
    assert allowed_draft.status_code == 202, allowed_draft.text
    assert len(seen) == 4
    assert [v["recipients"] for v in seen[2:]] == [["blocked@example.org"], ["fine@example.org"]]
    assert "secret body" not in json.dumps(seen) and "edited" not in json.dumps(seen)


async def test_a_draft_saved_again_while_it_is_checked_is_not_sent(
    db_dsn: str, keyring: KeyRing, test_ca: LocalCA, account: dict[str, object]
) -> None:
    """The check runs outside the transaction that queues the draft: a save that lands in
    between (here made by the check service itself, through the API) must not let the
    unchecked new version go out. The sender is told to send again."""
    editing: list[httpx.AsyncClient] = []
    draft: dict[str, str] = {}

    async def verdict(request: dict[str, object]) -> bool:
        if editing:  # the user saves the draft again while the check is running
            saved = await editing[0].put(
                f"/v1/drafts/{draft['id']}", json={"to": ["other@example.org"], "text": "v2"}
            )
            assert saved.status_code == 202, saved.text
        return True

    async with (
        check_service(verdict) as url,
        serve(db_dsn, keyring, test_ca, presend_check_url=url) as api,
        client_for(api, account["token"]) as client,
    ):
        created = await client.post("/v1/drafts", json={"to": ["a@example.org"], "text": "v1"})
        draft["id"] = created.json()["draft_id"]
        editing.append(client)
        raced = await client.post(f"/v1/drafts/{draft['id']}/send")
        editing.clear()
        again = await client.post(f"/v1/drafts/{draft['id']}/send")
        outbox = await client.get(f"/v1/outbox/{again.json().get('operation_id')}")
    assert raced.status_code == 409 and raced.json()["error"] == "draft_changed", raced.text
    assert again.status_code == 202, again.text
    assert outbox.status_code == 200


async def test_forward_reuses_a_synced_attachment_and_replies_thread(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, smtp_server: SmtpServer,
    account: dict[str, object],
) -> None:  # fmt: skip
    user = account["user"]
    assert isinstance(user, MailUser)
    original = (
        b"From: boss@example.org\r\nTo: me@example.test\r\nSubject: report\r\n"
        b"Message-ID: <orig-1@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b'Content-Type: application/pdf; name="q3.pdf"\r\n'
        b'Content-Disposition: attachment; filename="q3.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgcTM=\r\n--b--\r\n"
    )
    dovecot.deliver(user, original)
    async with client_for(api, account["token"]) as client:
        async with asyncio.timeout(20):
            while True:
                async with db_pool.acquire() as conn:
                    row = await conn.fetchrow(
                        "SELECT m.id, a.id AS attachment FROM messages m JOIN attachments a "
                        "ON a.message_id = m.id WHERE m.account_id=$1 AND m.subject='report'",
                        account["account_id"],
                    )
                if row:
                    break
                await asyncio.sleep(0.05)
        answer = await client.post(
            "/v1/send",
            json={"to": ["boss@example.org"], "subject": "Re: report", "text": "thanks",
                  "attachment_ids": [str(row["attachment"])], "in_reply_to": row["id"]},
            headers={"Idempotency-Key": "fwd"},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        assert (await settle(client, answer.json()["operation_id"]))["status"] == "sent"
    [received] = smtp_server.received_by(user.name)
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["In-Reply-To"] == "<orig-1@example.org>"
    assert "<orig-1@example.org>" in parsed["References"]
    [attached] = [p for p in parsed.iter_attachments() if p.get_filename() == "q3.pdf"]
    assert attached.get_content() == b"%PDF-1.4 q3"
