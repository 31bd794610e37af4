"""A canary password and a canary refresh token go through every path that handles them, including
the failing ones, with mailish's own logging at DEBUG. Afterwards neither appears in any log line,
any API response, a ``pg_dump`` of the database or the Redis token cache.

Induced errors: a wrong password at link time, a token endpoint answering 503, a password
changed at the server (the worker marks the account ``auth_invalid``), a revoked grant, and
re-authorisation attempts that fail.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import secrets
from collections.abc import Iterator

import httpx
import pytest

from mailish.config import load_settings
from mailish.domain.ids import Epoch
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.observability.logs import configure
from mailish.services.brokers import broker_from, close_broker
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.harness.dumps import pg_dump
from tests.harness.oauth_server import OAuthServer, provider_config
from tests.harness.redis_server import RedisServer
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import serve

BUCKETS = 8


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """mailish's production log setup (JSON, context fields) at DEBUG, into a buffer."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    configure(level="DEBUG", fmt="json", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_mailish", False)]:
            root.removeHandler(handler)
        root.setLevel(level)


def forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def leaks(haystack: bytes, *canaries: str) -> list[str]:
    return [c for c in canaries for form in forms(c) if form in haystack]


async def test_canaries_appear_in_no_log_response_dump_or_cache(
    debug_log: io.StringIO, db_dsn: str, db_pool: Pool, keyring: KeyRing, test_ca: LocalCA,
    policy: ConnectionPolicy, dovecot: Dovecot, smtp_server: SmtpServer,
    oauth_server: OAuthServer, redis_server: RedisServer,
) -> None:  # fmt: skip
    password = "canary-pw-" + secrets.token_hex(8)
    wrong = "canary-wrong-" + secrets.token_hex(8)
    pw_user = dovecot.add_user(password=password)
    smtp_server.add_user(pw_user.name, password)
    oauth_user = dovecot.add_user()
    refresh = oauth_server.issue_refresh_token(oauth_user.name)  # "rt-" + 22 random chars
    canaries = (password, wrong, refresh)
    servers = {
        "imap": {"host": "localhost", "port": dovecot.imaps_port, "security": "tls"},
        "smtp": {"host": "localhost", "port": smtp_server.tls_port, "security": "tls"},
    }
    options: dict[str, object] = {
        "oauth_providers": json.dumps({"test": provider_config(oauth_server, **servers)}),
        "redis_url": redis_server.url, "buckets": BUCKETS, "log_level": "DEBUG",
    }  # fmt: skip
    responses: list[bytes] = []

    async def call(
        client: httpx.AsyncClient, method: str, url: str, **kw: object
    ) -> httpx.Response:
        answer = await client.request(method, url, **kw)  # type: ignore[arg-type]
        responses.append(answer.content + repr(answer.headers).encode())
        return answer

    async with (
        serve(db_dsn, keyring, test_ca, **options) as api,
        httpx.AsyncClient(base_url=api.base, timeout=30) as client,
    ):
        link = {"email": f"{pw_user.name}@example.test", "username": pw_user.name, **servers}
        refused = await call(client, "POST", "/v1/accounts", json={**link, "password": wrong})
        assert refused.status_code == 401
        linked = await call(client, "POST", "/v1/accounts", json={**link, "password": password})
        assert linked.status_code == 201, linked.text
        pw_headers = {"Authorization": f"Bearer {linked.json()['token']}"}

        oauth_server.fail_with = [503]
        oauth_link = {"email": f"{oauth_user.name}@example.test", "username": oauth_user.name,
                      "oauth": {"provider": "test", "refresh_token": refresh}}  # fmt: skip
        unavailable = await call(client, "POST", "/v1/accounts", json=oauth_link)
        assert unavailable.status_code == 503
        linked_oauth = await call(client, "POST", "/v1/accounts", json=oauth_link)
        assert linked_oauth.status_code == 201, linked_oauth.text
        oauth_headers = {"Authorization": f"Bearer {linked_oauth.json()['token']}"}

        settings = load_settings(tls_ca_file=(test_ca.ca_file,), **options)
        broker = broker_from(settings, keyring)
        worker = Worker(
            pool=db_pool, keyring=keyring, policy=policy, dsn=db_dsn, broker=broker,
            assigner=StaticAssigner(buckets=BUCKETS, owner="canary", epoch=Epoch(2)),
            tuning=WorkerTuning(audit_interval=0.2, sync=SyncTuning(poll_interval=30)),
        )  # fmt: skip
        task = asyncio.create_task(worker.run())
        try:
            for headers in (pw_headers, oauth_headers):
                async with asyncio.timeout(30):
                    while (await call(client, "GET", "/v1/account", headers=headers)).json()[
                        "sync"
                    ]["state"] != "idle":
                        await asyncio.sleep(0.1)
                await call(client, "GET", "/v1/mailboxes", headers=headers)
            # The password changes at the server; the worker's next login is refused.
            dovecot.set_password(pw_user.name, "changed-" + secrets.token_hex(4))
            await asyncio.to_thread(dovecot.doveadm, "kick", pw_user.name)
            async with asyncio.timeout(30):
                while (await call(client, "GET", "/v1/account", headers=pw_headers)).json()[
                    "status"
                ] != "auth_invalid":
                    await asyncio.sleep(0.1)
            again = await call(
                client, "PUT", "/v1/account/credentials", json={"password": wrong},
                headers=pw_headers,
            )  # fmt: skip
            assert again.status_code == 401
            # The grant is revoked; re-authorising with it is refused.
            oauth_server.revoke(oauth_user.name)
            bad_grant = await call(
                client, "PUT", "/v1/account/credentials",
                json={"oauth": {"provider": "test", "refresh_token": refresh}},
                headers=oauth_headers,
            )  # fmt: skip
            assert bad_grant.status_code == 401
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await close_broker(broker)

    log_text = debug_log.getvalue().encode()
    assert b'"level": "DEBUG"' in log_text or b'"level": "INFO"' in log_text  # it did log
    assert b"login refused" in log_text  # the induced auth failure was logged...
    assert leaks(log_text, *canaries) == []  # ...without the secret
    assert leaks(b"\n".join(responses), *canaries) == []
    dump = pg_dump(db_dsn)
    assert b"oauth2" in dump and pw_user.name.encode() in dump  # the dump holds the accounts
    assert leaks(dump, *canaries) == []
    assert leaks(redis_server.snapshot(), *canaries) == []
