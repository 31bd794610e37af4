"""Real worker processes: SIGKILL during an initial sync, restart, and nothing is lost or
duplicated; and the `mailish accounts` commands as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import asyncpg

from mailish.domain.endpoints import Endpoint, Security
from mailish.mail.credentials import KeyRing, format_key, new_key
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import connecting
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.https_server import Answer, HttpsServer
from tests.harness.mailboxes import local_snapshot, server_snapshot
from tests.harness.smtp import SmtpServer

MAILISH = [sys.executable, "-m", "mailish"]


def env_for(dsn: str, ca: LocalCA, keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILISH_")}
    env.update(
        MAILISH_DATABASE_URL=dsn,
        MAILISH_SECRET_KEYS=keys,
        MAILISH_TLS_CA_FILE=str(ca.ca_file),
        MAILISH_ALLOW_PRIVATE_HOSTS="1",
        MAILISH_BUCKETS="4",
        MAILISH_SYNC_BATCH="100",
        MAILISH_LOG_LEVEL="WARNING",
    )
    return env


async def count(conn: asyncpg.Connection, account_id: object) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE account_id=$1 AND expunged_at IS NULL",
            account_id,
        )
    )


async def test_sigkill_during_initial_sync_resumes_without_loss_or_duplicates(
    db_dsn: str, dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA
) -> None:
    total = 5000
    dovecot.load_maildir(mail_user, total)
    key = new_key()
    keyring = KeyRing({"k1": key}, "k1")
    pool = await connecting.connect_pool(db_dsn)
    try:
        linked = await link(
            pool,
            LinkRequest(email=f"{mail_user.name}@example.test", password=mail_user.password,
                        imap=Endpoint("localhost", dovecot.imaps_port, Security.TLS),
                        smtp=None, username=mail_user.name),
            keyring=keyring,
            policy=ConnectionPolicy(ca_files=(test_ca.ca_file,), allow_private_hosts=True),
            buckets=4,
        )  # fmt: skip
    finally:
        await pool.close()
    env = env_for(db_dsn, test_ca, format_key("k1", key))
    conn = await asyncpg.connect(db_dsn)
    try:
        kills = []
        for kill_at in (300, 1800, 3600):
            proc = subprocess.Popen([*MAILISH, "worker"], env=env, stderr=subprocess.PIPE)
            async with asyncio.timeout(60):
                while (n := await count(conn, linked.account_id)) < kill_at:
                    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                    await asyncio.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(n)
        assert kills == sorted(kills) and kills[-1] < total, kills
        proc = subprocess.Popen([*MAILISH, "worker"], env=env, stderr=subprocess.PIPE)
        try:
            async with asyncio.timeout(60):
                while (
                    await conn.fetchval(
                        "SELECT count(*) FROM folders WHERE account_id=$1"
                        " AND sync_phase <> 'synced' AND selectable",
                        linked.account_id,
                    )
                    or await count(conn, linked.account_id) < total
                ):
                    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                    await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()[-2000:]
        local = await local_snapshot(conn, linked.account_id)
        duplicates = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (folder_id, uid)) FROM messages WHERE account_id=$1",
            linked.account_id,
        )
        epochs = await conn.fetchval("SELECT max(epoch) FROM bucket_claims")
    finally:
        await conn.close()
    server = server_snapshot(dovecot, mail_user, str(test_ca.ca_file))
    assert local == server
    assert duplicates == 0
    assert epochs == 4  # every restart fenced its predecessor with a new epoch


async def test_accounts_commands(
    db_dsn: str, dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA
) -> None:
    env = env_for(db_dsn, test_ca, format_key("k1", new_key()))
    add = [
        *MAILISH, "accounts", "add", f"{mail_user.name}@example.test", "--username",
        mail_user.name, "--imap-host", "localhost", "--imap-port", str(dovecot.imaps_port),
        "--imap-security", "tls", "--password-stdin",
    ]  # fmt: skip
    wrong = subprocess.run(
        add, input="wrong\n", env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert wrong.returncode == 1
    assert wrong.stderr.strip().startswith("mailish: auth_failed:")
    assert "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    listed = subprocess.run(
        [*MAILISH, "accounts", "list"], env=env, capture_output=True, text=True, check=True
    )
    assert listed.stdout.strip() == "", "a failed link must create nothing"

    good = subprocess.run(
        add, input=mail_user.password + "\n", env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    created = json.loads(good.stdout)
    assert set(created) >= {"account_id", "token"}
    assert created["token"].startswith("mlsh_")
    assert mail_user.password not in good.stdout + good.stderr
    status = subprocess.run(
        [*MAILISH, "accounts", "status", f"{mail_user.name}@example.test"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    progress = json.loads(status.stdout)
    assert progress["status"] == "active"
    assert {"messages_synced", "messages_total", "folders_synced", "last_error"} <= set(progress)
    again = subprocess.run(
        add, input=mail_user.password + "\n", env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 1
    assert "already_linked" in again.stderr


def ispdb_entry(imaps_port: int, smtps_port: int) -> bytes:
    """What an ISPDB serves for example.test: Dovecot and the submission server, both TLS."""
    return f"""<?xml version="1.0"?><clientConfig version="1.1"><emailProvider id="test">
<incomingServer type="imap"><hostname>localhost</hostname><port>{imaps_port}</port>
<socketType>SSL</socketType><username>%EMAILLOCALPART%</username></incomingServer>
<outgoingServer type="smtp"><hostname>localhost</hostname><port>{smtps_port}</port>
<socketType>SSL</socketType><username>%EMAILLOCALPART%</username></outgoingServer>
</emailProvider></clientConfig>""".encode()


async def test_accounts_add_discovers_the_servers(
    db_dsn: str, dovecot: Dovecot, mail_user: MailUser, test_ca: LocalCA,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    """Without --imap-host the command discovers the servers as the API does (here from an
    ISPDB), verifies both logins and says where the settings came from."""
    smtp_server.add_user(mail_user.name, mail_user.password)
    ispdb = HttpsServer(test_ca.server_context())
    ispdb.route(
        "127.0.0.1",
        "/v1.1/example.test",
        Answer(body=ispdb_entry(dovecot.imaps_port, smtp_server.tls_port)),
    )
    ispdb.start()
    env = env_for(db_dsn, test_ca, format_key("k1", new_key()))
    # an address: discovery asks DNS itself (no /etc/hosts), and there is no DNS here
    env["MAILISH_ISPDB_URL"] = f"https://127.0.0.1:{ispdb.port}/v1.1/"
    try:
        added = subprocess.run(
            [*MAILISH, "accounts", "add", f"{mail_user.name}@example.test", "--password-stdin"],
            input=mail_user.password + "\n", env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        unknown = subprocess.run(
            [*MAILISH, "accounts", "add", "someone@nowhere.invalid", "--password-stdin"],
            input="pw\n", env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        ispdb.stop()
        smtp_server.remove_user(mail_user.name)
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["source"] == "ispdb"
    assert created["imap"] == {"host": "localhost", "port": dovecot.imaps_port, "security": "tls"}
    assert created["smtp"]["port"] == smtp_server.tls_port
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("mailish: discovery_failed:"), unknown.stderr
    assert "Traceback" not in unknown.stderr
