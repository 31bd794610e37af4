"""Hostile mail end to end: monsters appended to a real Dovecot folder between normal messages
are synced by a running worker into PostgreSQL, each stored byte-identical with the parse the
bounded parser gives it (defects included), and the worker keeps syncing afterwards.

No quarantine is needed: the parser is bounded (tests/unit/test_mime_corpus.py states and
checks the bounds), so every message is stored raw and parsed best-effort.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import Epoch
from mailish.domain.parsing import parse_message
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness import hostile_mime as hm
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot, MailUser, make_message
from tests.harness.mailboxes import local_snapshot, server_snapshot

BIG = 50 * hm.MB  # the single-line body; Dovecot takes it in about a second
MEDIUM = 2 * hm.MB
DEADLINE = 90.0  # generous: 60 MB of mail crosses TLS and PostgreSQL on a busy machine


@dataclass(frozen=True)
class Delivered:
    name: str
    uid: int
    served: bytes  # the bytes Dovecot serves: NUL arrives as 0x80 (doveadm save)


def monsters() -> dict[str, Callable[[], bytes]]:
    named = hm.named_monsters(BIG, MEDIUM)
    named["deep-quoted-printable-60x1MB"] = lambda: hm.deep_quoted_printable(20, 256 << 10)
    named["long-header-line"] = lambda: hm.long_header_line(8 * hm.MB)  # one 50 MB one is enough
    return named


def normal(i: int) -> bytes:
    return make_message(i, random.Random(i)).replace(b"\n", b"\r\n")


async def rows_by_uid(pool: Pool, account_id: object) -> dict[int, Any]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT m.uid, m.subject, m.parse_defects, m.snippet, m.has_attachments, "
            "m.size, m.sha256, (SELECT count(*) FROM attachments a WHERE a.message_id = m.id) "
            "AS attachments FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE m.account_id = $1 AND f.path = 'INBOX' AND m.expunged_at IS NULL",
            account_id,
        )
    return {r["uid"]: r for r in rows}


async def test_monsters_are_stored_raw_and_parsed_while_the_worker_keeps_syncing(
    db_pool: Pool, dovecot: Dovecot, mail_user: MailUser, keyring: KeyRing,
    policy: ConnectionPolicy, test_ca: LocalCA,
) -> None:  # fmt: skip
    delivered: list[Delivered] = []
    for name, build in [("normal-before", lambda: normal(1)), *monsters().items()]:
        raw = build()
        uid = await asyncio.to_thread(dovecot.deliver, mail_user, raw)
        delivered.append(Delivered(name, uid, raw.replace(b"\x00", b"\x80")))
    delivered.append(Delivered("normal-after", dovecot.deliver(mail_user, normal(2)), normal(2)))

    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    account = await link(
        db_pool,
        LinkRequest(email=f"{mail_user.name}@example.test", password=mail_user.password,
                    imap=endpoint, smtp=None, username=mail_user.name),
        keyring=keyring, policy=policy, buckets=4,
    )  # fmt: skip
    worker = Worker(
        pool=db_pool,
        assigner=StaticAssigner(buckets=4, owner="w", epoch=Epoch(1)),
        keyring=keyring,
        policy=policy,
        tuning=WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=1)),
    )
    task = asyncio.create_task(worker.run())
    try:
        started = time.monotonic()
        rows: dict[int, Any] = {}
        async with asyncio.timeout(DEADLINE):
            while len(rows) < len(delivered):
                assert not task.done(), task
                await asyncio.sleep(0.2)
                rows = await rows_by_uid(db_pool, account.account_id)
        first_pass = time.monotonic() - started

        # Every message: the server's exact bytes, and the parse those bytes give.
        for item in delivered:
            row = rows[item.uid]
            assert row["sha256"] == hashlib.sha256(item.served).digest(), item.name
            assert row["size"] == len(item.served), item.name
            expected = parse_message(item.served)
            assert row["subject"] == expected.subject, item.name
            assert list(row["parse_defects"]) == list(expected.defects), item.name
            assert row["snippet"] == expected.snippet, item.name
            assert row["attachments"] == len(expected.attachments), item.name
        by_name = {item.name: rows[item.uid] for item in delivered}
        assert "max-depth-exceeded" in by_name["deep-multipart-1000"]["parse_defects"]
        assert "max-parts-exceeded" in by_name["parts-10000"]["parse_defects"]
        assert by_name["parts-10000"]["attachments"] == 1999
        assert "header-too-long" in by_name["long-header-line"]["parse_defects"]
        assert by_name["long-body-line"]["snippet"] == "a" * 200
        assert by_name["normal-after"]["subject"].startswith("Test message 2 ")

        # The blobs hold the raw bytes themselves, not just their hash.
        async with db_pool.acquire() as conn:
            intact = await conn.fetchval(
                "SELECT bool_and(sha256(data) = sha256 AND length(data) = size) "
                "FROM message_blobs WHERE account_id = $1",
                account.account_id,
            )
        assert intact is True
        server = server_snapshot(dovecot, mail_user, str(test_ca.ca_file))
        async with db_pool.acquire() as conn:
            local = await local_snapshot(conn, account.account_id)  # type: ignore[arg-type]
        assert local["INBOX"] == server["INBOX"]

        # The worker survived: its account runner is healthy and new mail still arrives.
        runner = worker.runner(account.account_id)  # type: ignore[arg-type]
        assert runner is not None and runner.healthy
        late = dovecot.deliver(mail_user, normal(3))
        async with asyncio.timeout(30):
            while late not in (rows := await rows_by_uid(db_pool, account.account_id)):
                assert not task.done(), task
                await asyncio.sleep(0.1)
        assert rows[late]["subject"].startswith("Test message 3 ")
        assert not task.done()
        print(f"hostile mailbox: {len(delivered)} messages synced in {first_pass:.1f} s")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
