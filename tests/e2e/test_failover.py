"""Failover end to end: real worker processes, the real operator, PostgreSQL and Dovecot.

The Kubernetes API is the in-process emulator (no real API server exists here); everything
else is real. SIGKILL one worker: its buckets move and every mailbox still converges. SIGSTOP
another past its lease: its buckets move, and when it wakes every write it tries is fenced —
in particular it sends nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from mailish.domain.endpoints import Endpoint, Security
from mailish.mail.credentials import KeyRing, format_key, new_key
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import connecting
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.harness.kube_emulator import KubeEmulator
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import serve
from tests.operator.cluster import NS, Cluster, OperatorThread
from tests.operator.conftest import emulator  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(420)
BUCKETS = 8
ACCOUNTS = 120


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "e", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
                "current-context": "e",
            }
        )
    )  # fmt: skip
    return path


async def eventually(check: Callable[[], object], *, timeout: float) -> None:
    """Poll ``check`` (sync or async) until it is true."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.1)


async def synced_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT a.email, count(m.id) AS n FROM accounts a LEFT JOIN messages m "
        "ON m.account_id = a.id AND m.expunged_at IS NULL GROUP BY a.email"
    )
    return {r["email"]: r["n"] for r in rows}


async def test_worker_death_and_pause_lose_nothing_and_send_nothing_twice(
    emulator: KubeEmulator,  # noqa: F811
    db_dsn: str,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    test_ca: LocalCA,
    tmp_path: Path,
) -> None:
    key = new_key()
    keyring = KeyRing({"k1": key}, "k1")
    policy = ConnectionPolicy(ca_files=(test_ca.ca_file,), allow_private_hosts=True)
    users = [dovecot.add_user() for _ in range(ACCOUNTS)]
    pool = await connecting.connect_pool(db_dsn, max_size=4)
    tokens: dict[str, str] = {}
    try:
        for n, user in enumerate(users):
            dovecot.load_maildir(user, 10, seed=n)
            smtp_server.add_user(user.name, user.password)
            linked = await link(
                pool,
                LinkRequest(
                    email=f"{user.name}@example.test", password=user.password,
                    username=user.name,
                    imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS),
                    smtp=Endpoint("localhost", smtp_server.port, Security.STARTTLS),
                ),
                keyring=keyring, policy=policy, buckets=BUCKETS,
            )  # fmt: skip
            tokens[user.name] = linked.token
    finally:
        await pool.close()
    config = kubeconfig(tmp_path / "kubeconfig", emulator.api_url)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
    base_env.pop("KUBERNETES_SERVICE_HOST", None)
    base_env.update(
        KUBECONFIG=str(config), MAILISH_DATABASE_URL=db_dsn,
        MAILISH_SECRET_KEYS=format_key("k1", key), MAILISH_TLS_CA_FILE=str(test_ca.ca_file),
        MAILISH_ALLOW_PRIVATE_HOSTS="1", MAILISH_BUCKETS=str(BUCKETS),
        MAILISH_LEASE_DURATION="2", MAILISH_LOG_LEVEL="INFO", MAILISH_LOG_FORMAT="text",
        MAILISH_SYNC_POLL_INTERVAL="2", MAILISH_SYNC_NOTIFY_POLL_INTERVAL="2",
    )  # fmt: skip
    logs: dict[str, Path] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(cluster: Cluster, name: str, node: str) -> None:
        uid = cluster.worker(name, node, lease=False)  # the process renews its own Lease
        env = {**base_env, "POD_NAME": name, "POD_UID": uid, "NODE_NAME": node,
               "POD_NAMESPACE": NS}  # fmt: skip
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as out:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mailish", "worker"], env=env, stdout=out, stderr=out
            )

    conn = await asyncpg.connect(db_dsn)
    try:
        async with (
            Cluster(emulator) as cluster,
            OperatorThread(emulator.api_url),
            serve(db_dsn, keyring, test_ca) as api,
        ):
            cluster.node("n1", "a")
            cluster.node("n2", "b")
            cluster.node("n3", "c")
            cluster.pool(BUCKETS, leaseGraceSeconds=2, resyncSeconds=1)
            for name, node in (("w1", "n1"), ("w2", "n2")):
                start(cluster, name, node)
            expected = {f"{u.name}@example.test": 10 for u in users}

            async def converged() -> bool:
                return await synced_counts(conn) == expected

            await eventually(converged, timeout=120)

            # 1. SIGKILL w1 while new mail arrives: everything ends up synced by w2.
            procs["w1"].kill()
            procs["w1"].wait()
            for user in users:
                dovecot.deliver(user, b"Subject: after the crash\r\n\r\nx\r\n")
            expected = {k: v + 1 for k, v in expected.items()}
            await eventually(lambda: set(cluster.owners().values()) == {"w2"}, timeout=30)
            await eventually(converged, timeout=120)

            # 2. SIGSTOP w2 past its lease; w3 takes over; a send queued meanwhile goes out
            #    once, from w3; the woken w2's writes are fenced.
            start(cluster, "w3", "n3")
            await asyncio.sleep(1)
            procs["w2"].send_signal(signal.SIGSTOP)
            await eventually(lambda: set(cluster.owners().values()) == {"w3"}, timeout=30)
            sender = users[0]
            async with httpx.AsyncClient(
                base_url=api.base, headers={"Authorization": f"Bearer {tokens[sender.name]}"}
            ) as client:
                answer = await client.post(
                    "/v1/send", json={"to": ["friend@example.org"], "text": "once"},
                    headers={"Idempotency-Key": "failover"},
                )  # fmt: skip
                assert answer.status_code == 202
                op = answer.json()["operation_id"]

                async def sent() -> bool:
                    body = (await client.get(f"/v1/outbox/{op}")).json()
                    return bool(body["status"] == "sent")

                await eventually(sent, timeout=120)
            expected[f"{sender.name}@example.test"] += 1  # its Sent copy
            procs["w2"].send_signal(signal.SIGCONT)
            for user in users:
                dovecot.deliver(user, b"Subject: after the pause\r\n\r\nx\r\n")
            expected = {k: v + 1 for k, v in expected.items()}
            try:
                await eventually(converged, timeout=120)
            except TimeoutError:
                behind = {k: v for k, v in (await synced_counts(conn)).items() if expected[k] != v}
                buckets = dict(await conn.fetch("SELECT email, bucket FROM accounts"))
                raise AssertionError(
                    f"behind: {[(k, v, buckets[k]) for k, v in behind.items()]}; "
                    f"owners {cluster.owners()}; epochs {cluster.epochs()}"
                ) from None
            await asyncio.sleep(3)  # give the woken w2 time to try (and fail) to write
            epochs = cluster.epochs()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        duplicates = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (folder_id, uid)) FROM messages "
            "WHERE expunged_at IS NULL"
        )
        claims = dict(await conn.fetch("SELECT bucket, epoch FROM bucket_claims"))
        await conn.close()
    assert duplicates == 0
    got = smtp_server.received_by(sender.name)  # the session's server: other tests send too
    assert len(got) == 1, [(r.auth_user, r.rcpt_tos) for r in got]
    assert all(claims[b] == epochs[b] for b in claims), (claims, epochs)
    w2_log = logs["w2"].read_text(errors="replace")
    assert "superseded" in w2_log or "fenced" in w2_log.lower(), w2_log[-3000:]
