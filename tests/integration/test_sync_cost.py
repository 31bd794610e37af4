"""What a round costs PostgreSQL, counted on a real server: the worker's start-up time for
thousands of accounts is mostly these statements and commits (bench/scale.py), so a change
that adds some per folder shows here first. And the short cuts that saved them (empty new
folders settled from LIST-STATUS, passes that save nothing) still converge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from mailish.domain.syncing import Phase
from mailish.mail.imap.session import ImapSession
from mailish.store import connecting
from mailish.store.folders import list_folders
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked
from tests.integration.test_sync import assert_converged, imap_client

# asyncpg's own type introspection, once per connection and type: not the worker's cost
_INTROSPECTION = ("typeinfo_tree", "set_config('jit'", "current_setting('jit')")


@dataclass
class Statements:
    seen: list[str] = field(default_factory=list)

    def record(self, query: Any) -> None:
        text = " ".join(query.query.split())
        if not any(marker in text for marker in _INTROSPECTION):
            self.seen.append(text)

    @property
    def commits(self) -> int:
        return sum(1 for q in self.seen if q.startswith("COMMIT"))

    def count(self, prefix: str) -> int:
        return sum(1 for q in self.seen if q.startswith(prefix))


@pytest.fixture
async def counted(db_dsn: str) -> AsyncIterator[tuple[connecting.Pool, Statements]]:
    statements = Statements()

    async def setup(conn: asyncpg.Connection[Any]) -> None:
        conn.add_query_logger(statements.record)

    pool = await asyncpg.create_pool(
        db_dsn, min_size=1, max_size=4, init=connecting._init_connection,
        reset=connecting._keep_session, setup=setup,
    )  # fmt: skip
    yield pool, statements
    await pool.close()


async def one_round(linked: Linked, pool: connecting.Pool, session: ImapSession) -> None:
    """What the loop does for its first round: sync, apply queued work, report idle."""
    sync = linked.sync(pool)
    await sync.sync_all(session)
    await sync.apply_operations(session)
    await sync._set_state("idle", None)


async def test_a_small_account_comes_online_in_two_commits(
    counted: tuple[connecting.Pool, Statements], dovecot: Dovecot, linked: Linked,
    session: ImapSession, test_ca: LocalCA,
) -> None:  # fmt: skip
    """Three messages in INBOX and five empty special-use folders (the scale benchmark's
    account): one commit mirrors the folder list and settles the empty folders, one stores
    INBOX with its final checkpoint. It was 15 commits and ~130 statements."""
    pool, statements = counted
    dovecot.load_maildir(linked.user, 3, seed=0)
    await one_round(linked, pool, session)
    assert statements.commits == 2, statements.seen
    assert len(statements.seen) <= 35, statements.seen
    assert statements.count("SELECT (SELECT count(*) FROM messages") == 0  # no folder counted
    await assert_converged(pool, dovecot, linked, test_ca)
    async with pool.acquire() as conn:
        stored = await list_folders(conn, account_id=linked.account_id)  # type: ignore[arg-type]
        progress = await conn.fetchrow(
            "SELECT messages_synced, messages_total, folders_synced, folders_total "
            "FROM accounts WHERE id = $1",
            linked.account_id,
        )
    assert {f.path for f in stored} == {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"}
    for folder in stored:
        assert folder.state.phase is Phase.SYNCED, folder.path
        assert folder.state.uidvalidity and folder.state.uidnext, folder.path
        assert folder.state.highestmodseq is not None, folder.path  # Dovecot has CONDSTORE
    assert dict(progress) == {
        "messages_synced": 3, "messages_total": 3, "folders_synced": 6, "folders_total": 6,
    }  # fmt: skip


async def test_an_unchanged_account_after_a_restart_writes_nothing_per_folder(
    counted: tuple[connecting.Pool, Statements], dovecot: Dovecot, linked: Linked,
    session: ImapSession,
) -> None:  # fmt: skip
    """A worker taking over a bucket runs a full round on every account: with QRESYNC and
    nothing changed, that is one commit (the folder-list mirror) and no checkpoint."""
    pool, statements = counted
    dovecot.load_maildir(linked.user, 3, seed=0)
    await one_round(linked, pool, session)
    statements.seen.clear()
    await one_round(linked, pool, session)  # a new AccountSync, as after a restart
    assert statements.commits == 1, statements.seen
    assert statements.count("UPDATE folders f SET uidvalidity") == 0, statements.seen
    assert len(statements.seen) <= 15, statements.seen


async def test_settled_empty_folders_pick_up_later_mail(
    counted: tuple[connecting.Pool, Statements], dovecot: Dovecot, linked: Linked,
    session: ImapSession, test_ca: LocalCA,
) -> None:  # fmt: skip
    """The state the mirror saved for an empty folder from LIST-STATUS is a correct
    checkpoint: mail delivered there afterwards, flagged and expunged, all converge."""
    pool, _ = counted
    await one_round(linked, pool, session)  # every folder is empty and settled
    client = imap_client(dovecot, linked, test_ca)
    try:
        for n in range(3):
            message = f"From: a@example.org\r\nSubject: late {n}\r\n\r\nbody {n}\r\n"
            assert client.append("Archive", "", None, message.encode())[0] == "OK"
        client.select("Archive")
        client.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        client.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
        client.expunge()
    finally:
        client.logout()
    await one_round(linked, pool, session)
    await assert_converged(pool, dovecot, linked, test_ca)
    async with pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT total FROM folders WHERE account_id = $1 AND path = 'Archive'",
            linked.account_id,
        )
    assert total == 2
