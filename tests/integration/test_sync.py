"""Sync against a real Dovecot into a real PostgreSQL: the server is the ground truth."""

from __future__ import annotations

import pytest

from mailish.mail.imap.session import ImapSession
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.harness.mailboxes import local_snapshot, message_ids, server_snapshot
from tests.integration.conftest import Linked

CYRILLIC = "Проекты/Отчёты 2026"


async def assert_converged(pool: Pool, dovecot: Dovecot, linked: Linked, ca: LocalCA) -> None:
    server = server_snapshot(dovecot, linked.user, str(ca.ca_file))
    async with pool.acquire() as conn:
        local = await local_snapshot(conn, linked.account_id)  # type: ignore[arg-type]
    assert local.keys() == server.keys()
    for path in server:
        assert local[path] == server[path], path


async def test_initial_sync_matches_the_server(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    dovecot.load_maildir(linked.user, 250)
    dovecot.load_maildir(linked.user, 30, seed=2, folder=CYRILLIC)
    dovecot.load_maildir(linked.user, 12, seed=3, folder="Sent")
    sync = linked.sync(db_pool, batch=40)
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        roles = dict(
            await conn.fetch(
                "SELECT path, role FROM folders WHERE account_id=$1", linked.account_id
            )
        )
        parent = await conn.fetchval(
            "SELECT p.path FROM folders f JOIN folders p ON p.id = f.parent_id "
            "WHERE f.account_id=$1 AND f.path=$2",
            linked.account_id, CYRILLIC,
        )  # fmt: skip
        progress = await conn.fetchrow(
            "SELECT messages_synced, messages_total, folders_synced, folders_total "
            "FROM accounts WHERE id=$1",
            linked.account_id,
        )
    assert roles["INBOX"] == "inbox"
    assert roles["Sent"] == "sent"
    assert roles["Trash"] == "trash"
    assert parent == "Проекты"
    assert progress["messages_synced"] == progress["messages_total"] == 292
    assert progress["folders_synced"] == progress["folders_total"]


def imap_client(dovecot: Dovecot, linked: Linked, ca: LocalCA):  # type: ignore[no-untyped-def]
    """Another client changing the mailbox behind our back (stdlib imaplib)."""
    import imaplib
    import ssl

    context = ssl.create_default_context(cafile=str(ca.ca_file))
    client = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=context)
    client.login(linked.user.name, linked.user.password)
    return client


async def test_incremental_new_flags_expunge_and_move_keep_ids(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    dovecot.load_maildir(linked.user, 40)
    sync = linked.sync(db_pool, batch=16)
    await sync.sync_all(session)
    async with db_pool.acquire() as conn:
        ids_before = await message_ids(conn, linked.account_id)  # type: ignore[arg-type]
        modseq_before = await conn.fetchval(
            "SELECT modseq FROM accounts WHERE id=$1", linked.account_id
        )
    dovecot.deliver(linked.user, b"From: x@example.org\r\nSubject: new\r\n\r\nhello\r\n")
    other = imap_client(dovecot, linked, test_ca)
    try:
        other.select("INBOX")
        other.uid("STORE", "3", "+FLAGS", "(\\Flagged $Important)")
        other.uid("STORE", "2", "-FLAGS", "(\\Seen)")  # 2 of 3 loaded messages are seen
        other.uid("STORE", "5", "+FLAGS", "(\\Deleted)")
        other.uid("EXPUNGE", "5")
        other.uid("MOVE", "6:8", "Archive")
    finally:
        other.logout()
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        ids_after = await message_ids(conn, linked.account_id)  # type: ignore[arg-type]
        # What /changes reports: each object's latest change since the client's state.
        feed = await conn.fetch(
            "SELECT object_kind, change, count(*) FROM ("
            "  SELECT DISTINCT ON (object_kind, object_id) object_kind, change FROM changes"
            "  WHERE account_id=$1 AND modseq>$2 ORDER BY object_kind, object_id, modseq DESC"
            ") latest GROUP BY 1, 2",
            linked.account_id, modseq_before,
        )  # fmt: skip
    moved = [sid for sid in ids_before if sid in ids_after]
    assert len(moved) == len(ids_before) - 1  # one expunged; moved ones keep their ids
    assert all(ids_before[sid] == ids_after[sid] for sid in moved)
    changes = {(r[0], r[1]): r[2] for r in feed}
    assert changes[("message", "created")] == 1
    assert changes[("message", "destroyed")] == 1
    assert changes[("message", "updated")] >= 5  # 2 flag changes + 3 moves


@pytest.mark.parametrize("use_qresync", [True, False])
async def test_flag_sync_on_a_5000_message_folder(
    db_pool: Pool,
    dovecot: Dovecot,
    linked: Linked,
    session: ImapSession,
    test_ca: LocalCA,
    use_qresync: bool,
) -> None:
    """5,000 FETCH responses in one command (aioimaplib recursed here) and CONDSTORE or
    plain flag diffs over the whole folder."""
    dovecot.load_maildir(linked.user, 5000)
    session.qresync = use_qresync
    sync = linked.sync(db_pool, batch=250)
    await sync.sync_all(session)
    other = imap_client(dovecot, linked, test_ca)
    try:
        other.select("INBOX")
        other.uid("STORE", ",".join(map(str, range(1, 5001, 7))), "+FLAGS", "(\\Flagged)")
        other.uid("STORE", "100:200", "-FLAGS", "(\\Seen)")
    finally:
        other.logout()
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)


async def test_uidvalidity_change_remaps_without_downloading(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    dovecot.load_maildir(linked.user, 30)
    sync = linked.sync(db_pool)
    await sync.sync_all(session)
    async with db_pool.acquire() as conn:
        ids_before = await message_ids(conn, linked.account_id)  # type: ignore[arg-type]
    await session.conn.command("UNSELECT") if session.conn.has("UNSELECT") else None
    session.selected = None
    dovecot.doveadm("mailbox", "update", "-u", linked.user.name, "--uid-validity", "12345", "INBOX")
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        ids_after = await message_ids(conn, linked.account_id)  # type: ignore[arg-type]
        state = await conn.fetchrow(
            "SELECT uidvalidity, resets FROM folders WHERE account_id=$1 AND path='INBOX'",
            linked.account_id,
        )
    assert ids_after == ids_before
    assert state["uidvalidity"] == 12345


async def test_folder_renamed_and_deleted(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    dovecot.load_maildir(linked.user, 5, folder="Projects")
    dovecot.load_maildir(linked.user, 3, seed=4, folder="Projects/Old")
    dovecot.load_maildir(linked.user, 2, seed=5, folder="Doomed")
    sync = linked.sync(db_pool)
    await sync.sync_all(session)
    async with db_pool.acquire() as conn:
        before = dict(
            await conn.fetch("SELECT path, id FROM folders WHERE account_id=$1", linked.account_id)
        )
    dovecot.doveadm("mailbox", "rename", "-u", linked.user.name, "Projects", "Работа")
    dovecot.doveadm("mailbox", "delete", "-u", linked.user.name, "Doomed")
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        after = dict(
            await conn.fetch("SELECT path, id FROM folders WHERE account_id=$1", linked.account_id)
        )
    assert after["Работа"] == before["Projects"]
    assert after["Работа/Old"] == before["Projects/Old"]
    assert "Doomed" not in after


async def test_imap_looking_and_malformed_bodies_are_stored_byte_identical(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    tricky = [
        b"Subject: * BYE\r\n\r\nA001 OK fake\r\n* BYE not really\r\n+ go\r\n{12}\r\n)\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nno end\r\n",
        b"Subject: =?koi8-r?B?9MXT1A==?=\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n"
        + "Привет".encode("koi8-r")
        + b"\r\n",
        b"no headers at all, just text\r\n",
        b"Subject: \xff\xfe broken \x80 bytes\r\nDate: not a date\r\n\r\n\xc3\x28\r\n",
    ]
    for raw in tricky:
        dovecot.deliver(linked.user, raw)
    sync = linked.sync(db_pool)
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        subjects = {
            r["subject"]
            for r in await conn.fetch(
                "SELECT subject FROM messages WHERE account_id=$1", linked.account_id
            )
        }
    assert "Тест" in subjects


async def test_folder_renamed_and_deleted_while_a_pass_runs(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    import asyncio

    from mailish.domain.errors import MailishError
    from mailish.domain.logins import PasswordLogin
    from mailish.mail.imap.connection import ImapConnection

    dovecot.load_maildir(linked.user, 3000, folder="Big")
    dovecot.load_maildir(linked.user, 50, seed=9, folder="Other")
    sync = linked.sync(db_pool, batch=50)
    running = asyncio.create_task(sync.sync_all(session))
    async with db_pool.acquire() as conn:
        async with asyncio.timeout(30):
            while not await conn.fetchval(
                "SELECT count(*) FROM messages m JOIN folders f ON f.id = m.folder_id "
                "WHERE f.account_id=$1 AND f.path='Big'",
                linked.account_id,
            ):
                await asyncio.sleep(0.01)
        big_id = await conn.fetchval(
            "SELECT id FROM folders WHERE account_id=$1 AND path='Big'", linked.account_id
        )
    await asyncio.to_thread(
        dovecot.doveadm, "mailbox", "rename", "-u", linked.user.name, "Big", "Bigger"
    )
    await asyncio.to_thread(dovecot.doveadm, "mailbox", "delete", "-u", linked.user.name, "Other")
    try:
        await running
    except MailishError:
        pass  # the server may drop the session; the worker would reconnect
    conn2 = await ImapConnection.open(linked.imap)
    await conn2.login(PasswordLogin(linked.user.name, linked.user.password))
    from mailish.mail.imap.session import ImapSession as Session

    fresh = Session(conn2)
    await fresh.enable_extensions()
    try:
        await sync.sync_all(fresh)
        await sync.sync_all(fresh)
    finally:
        await conn2.logout()
    await assert_converged(db_pool, dovecot, linked, test_ca)
    async with db_pool.acquire() as conn:
        paths = dict(
            await conn.fetch("SELECT path, id FROM folders WHERE account_id=$1", linked.account_id)
        )
    assert paths["Bigger"] == big_id
    assert "Other" not in paths


async def test_a_pass_that_changes_nothing_leaves_the_state_alone(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession
) -> None:
    """Clients poll /v1/changes and SSE pushes each new state: an idle pass must not make one."""
    dovecot.load_maildir(linked.user, 20)
    sync = linked.sync(db_pool)
    await sync.sync_all(session)

    async def state() -> int:
        async with db_pool.acquire() as conn:
            value: int = await conn.fetchval(
                "SELECT modseq FROM accounts WHERE id = $1", linked.account_id
            )
        return value

    before = await state()
    await sync.sync_all(session)
    await sync.sync_all(session)
    assert await state() == before
    dovecot.deliver(linked.user, b"From: a@example.org\r\nSubject: new\r\n\r\nx\r\n")
    await sync.sync_all(session)
    assert await state() > before  # a real change still moves it
