"""The scale benchmark's plumbing at 50 accounts, in every CI run, so ``bench/scale.py`` cannot
rot: a real ``mailish worker`` process brings 50 distinct Dovecot users online (one TLS
connection each, waiting in NOTIFY), one message delivered to each reaches PostgreSQL, and
after a SIGKILL a successor process takes them all over.

The benchmark proper (500-2,000 accounts, RSS, idle CPU, latency percentiles) is
``bench/test_scale_bench.py`` / ``python -m bench.scale``, marked slow.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.scale_rig import (
    WorkerProcess,
    deliver_and_time,
    ensure_inotify_instances,
    inbox_ids,
    make_users,
    new_keyring,
    raise_open_files_limit,
    seed_accounts,
    take_over,
    wait_claimed,
    wait_online,
)
from mailish.store import connecting
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot

pytestmark = pytest.mark.timeout(180)
ACCOUNTS = 50
MESSAGES = 2  # per INBOX before the worker starts


async def test_fifty_accounts_online_and_each_delivery_reaches_postgres(
    dovecot: Dovecot, db_dsn: str, test_ca: LocalCA, tmp_path: Path
) -> None:
    raise_open_files_limit()
    ensure_inotify_instances(4096)  # else Dovecot may fall back to 30 s mailbox polling
    users = make_users(dovecot, ACCOUNTS, messages=MESSAGES, prefix=f"s{uuid.uuid4().hex[:6]}-")
    keyring, secret_keys = new_keyring()
    worker = WorkerProcess(
        dsn=db_dsn, secret_keys=secret_keys, ca_file=test_ca.ca_file, workdir=tmp_path / "worker"
    )
    conn = await connecting.connect(db_dsn)
    try:
        worker.start()
        await wait_claimed(conn, limit=60, worker=worker)
        ids = await seed_accounts(conn, users, keyring=keyring, imaps_port=dovecot.imaps_port)
        await wait_online(conn, ACCOUNTS, limit=90)
        worker.check_alive()
        assert worker.imap_connections(dovecot.imaps_port) == ACCOUNTS
        synced = await conn.fetchval("SELECT count(*) FROM messages WHERE expunged_at IS NULL")
        assert synced == ACCOUNTS * MESSAGES
        usage = worker.usage()
        assert usage.rss_kb > 0 and usage.cpu_s > 0

        inboxes = await inbox_ids(conn, ids)
        deliveries = await deliver_and_time(
            conn, dovecot, sorted(ids), inboxes, rate=25.0, limit=90.0
        )
        missing = [d.user for d in deliveries if d.seen_after is None]
        assert not missing, f"never reached PostgreSQL: {missing}\n{worker.log_tail()}"
        assert len({(d.folder_id, d.uid) for d in deliveries}) == ACCOUNTS
        worker.check_alive()

        # The node dies: a successor takes every bucket over and re-syncs every account,
        # holding one connection each, without a duplicate or a lost message.
        await take_over(conn, worker, ACCOUNTS, limit=90)
        assert worker.imap_connections(dovecot.imaps_port) == ACCOUNTS
        synced = await conn.fetchval("SELECT count(*) FROM messages WHERE expunged_at IS NULL")
        assert synced == ACCOUNTS * (MESSAGES + 1)
        assert await conn.fetchval("SELECT count(DISTINCT epoch) FROM bucket_claims") == 1
    finally:
        await conn.close()
        code = worker.stop()
    assert code == 0, worker.log_tail()
