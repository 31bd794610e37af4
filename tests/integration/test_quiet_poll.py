"""The safety-net poll: when it heard nothing, it checks LIST-STATUS instead of opening every
folder (what kept a core busy with 2,000 idle accounts), yet still catches what the push
channel did not report.

IDLE watches INBOX only, so changes to other folders are found by exactly this poll.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mailish.mail.imap.session import ImapSession, SelectedMailbox
from mailish.store.connecting import Pool
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked

POLL = 0.5


async def eventually(pool: Pool, query: str, *args: object, limit: float = 20.0) -> None:
    started = time.monotonic()
    async with pool.acquire() as conn:
        while not await conn.fetchval(query, *args):
            if time.monotonic() - started > limit:
                raise AssertionError(f"not true within {limit}s: {query}")
            await asyncio.sleep(0.05)


def record_selects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders every session opens from now on, in order."""
    opened: list[str] = []
    real_select = ImapSession.select

    async def select(self: ImapSession, name: str, **kwargs: object) -> SelectedMailbox:
        opened.append(name)
        return await real_select(self, name, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImapSession, "select", select)
    return opened


async def test_quiet_polls_open_no_folder_but_find_changes_elsewhere(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.load_maildir(linked.user, 3, folder="Archive")
    opened = record_selects(monkeypatch)
    sync = linked.sync(db_pool, use_notify=False, poll_interval=POLL)
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.synced.wait(), 20)
        # Quiet polls: the loop goes round, and no folder is opened for it (once IDLE has
        # selected INBOX after the first round, it stays selected).
        async with asyncio.timeout(20):
            while sync.rounds < 2:
                await asyncio.sleep(0.05)
            rounds, opened[:] = sync.rounds, []
            while sync.rounds < rounds + 3:
                await asyncio.sleep(0.05)
        assert opened == []

        # New mail in a folder IDLE does not watch: the next poll's check sees UIDNEXT move.
        dovecot.deliver(linked.user, b"Subject: archived later\r\n\r\nx\r\n", folder="Archive")
        await eventually(
            db_pool, "SELECT 1 FROM messages WHERE account_id=$1 AND subject=$2",
            linked.account_id, "archived later",
        )  # fmt: skip

        # A flag change alone only moves HIGHESTMODSEQ: found as well.
        dovecot.doveadm(
            "flags", "add", "-u", linked.user.name, "\\Flagged", "mailbox", "Archive", "uid", "1"
        )
        await eventually(
            db_pool,
            "SELECT 1 FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.account_id=$1 AND f.path='Archive' AND m.uid=1 "
            "AND '\\Flagged' = ANY(m.flags)",
            linked.account_id,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_idle_notify_session_makes_no_rounds_of_its_own(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session keeps the NOTIFY events that arrive during its own commands: none of
    them may be caused by its own passes (read-only SELECTs, fetches), or it would go round
    and round."""
    for n in range(3):  # APPENDs: files dropped into the Maildir (load_maildir) make
        # Dovecot report its own index sync at the first SELECT, one extra round
        dovecot.deliver(linked.user, b"Subject: %d\r\n\r\nx\r\n" % n)
        dovecot.deliver(linked.user, b"Subject: a%d\r\n\r\nx\r\n" % n, folder="Archive")
    sync = linked.sync(db_pool)  # NOTIFY, safety poll after 300 s
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.synced.wait(), 20)
        async with asyncio.timeout(10):  # settled: no round for a second
            while True:
                before = sync.rounds
                await asyncio.sleep(1)
                if sync.rounds == before:
                    break
        rounds, opened = sync.rounds, record_selects(monkeypatch)
        await asyncio.sleep(3)
        assert (sync.rounds, opened) == (rounds, [])
        dovecot.deliver(linked.user, b"Subject: still awake\r\n\r\nx\r\n", folder="Archive")
        await eventually(
            db_pool, "SELECT 1 FROM messages WHERE account_id=$1 AND subject=$2",
            linked.account_id, "still awake",
        )  # fmt: skip
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
