"""UIDVALIDITY that keeps changing: the breaker stops re-mapping the folder and flags it.

``test_sync.py::test_uidvalidity_change_remaps_without_downloading`` covers one change (a
remap by stable id, ids kept). Here the server changes INBOX's UIDVALIDITY before every
pass, as a broken server or a mailbox restored over and over would. Past ``MAX_RESETS``
consecutive changes the folder must be flagged (reason stored, sync skips it) instead of
being re-mapped forever, while the account's other folders keep syncing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from mailish.domain import syncing
from mailish.domain.logins import PasswordLogin
from mailish.mail.imap.connection import ImapConnection
from mailish.mail.imap.session import ImapSession
from mailish.store.connecting import Pool
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked, RunningApi

FOLDER_STATE = """
SELECT f.path, f.uidvalidity, f.resets, f.sync_phase, f.flagged_reason,
       (SELECT count(*) FROM messages m WHERE m.folder_id = f.id AND m.expunged_at IS NULL)
           AS live
FROM folders f WHERE f.account_id = $1 AND f.path IN ('INBOX', 'Work')
"""


async def one_pass(pool: Pool, linked: Linked, **tuning: object) -> None:
    """A pass on a fresh connection, as the account loop makes after a reconnect."""
    conn = await ImapConnection.open(linked.imap)
    try:
        await conn.login(PasswordLogin(linked.user.name, linked.user.password))
        session = ImapSession(conn)
        await session.enable_extensions()
        await linked.sync(pool, **tuning).sync_all(session)
    finally:
        await conn.logout()


async def states(pool: Pool, linked: Linked) -> dict[str, dict[str, object]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(FOLDER_STATE, linked.account_id)
    return {r["path"]: dict(r) for r in rows}


def note(n: int) -> bytes:
    return f"From: a@example.org\r\nSubject: note {n}\r\n\r\nnote {n}\r\n".encode()


async def test_flapping_uidvalidity_trips_the_breaker_and_flags_only_that_folder(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, api: RunningApi
) -> None:
    user = linked.user
    dovecot.load_maildir(user, 10)
    dovecot.load_maildir(user, 3, seed=2, folder="Work")
    await one_pass(db_pool, linked)
    before = await states(db_pool, linked)
    assert before["INBOX"]["live"] == 10
    assert before["INBOX"]["resets"] == 0

    changes = syncing.MAX_RESETS + 1
    for n in range(1, changes + 1):
        dovecot.doveadm(
            "mailbox", "update", "-u", user.name, "--uid-validity", str(5000 + n), "INBOX"
        )
        dovecot.deliver(user, note(n), folder="Work")
        await one_pass(db_pool, linked)
        now = await states(db_pool, linked)
        assert now["Work"]["live"] == 3 + n  # the other folder keeps syncing every pass
        if n <= syncing.MAX_RESETS:  # re-mapped by stable id, nothing lost
            assert now["INBOX"]["resets"] == n
            assert now["INBOX"]["uidvalidity"] == 5000 + n
            assert now["INBOX"]["flagged_reason"] is None
            assert now["INBOX"]["live"] == 10

    tripped = (await states(db_pool, linked))["INBOX"]
    assert tripped["sync_phase"] == syncing.Phase.FLAGGED.value
    assert tripped["flagged_reason"] == f"UIDVALIDITY changed {changes} times in a row"
    assert tripped["live"] == 10  # flagged, not wiped: the user keeps the mail already synced

    # The loop has stopped for INBOX: new mail there is not picked up, not even when the
    # UIDVALIDITY holds still; Work goes on.
    dovecot.deliver(user, note(99))
    dovecot.deliver(user, note(100), folder="Work")
    await one_pass(db_pool, linked)
    await one_pass(db_pool, linked)
    after = await states(db_pool, linked)
    assert after["INBOX"]["live"] == 10
    assert after["INBOX"]["flagged_reason"] == tripped["flagged_reason"]
    assert after["INBOX"]["uidvalidity"] == tripped["uidvalidity"]
    assert after["Work"]["live"] == 3 + changes + 1

    # The app learns why: the folder carries the reason, the others none.
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        listed = (await client.get("/v1/folders")).json()["folders"]
    problems = {f["path"]: f["sync_problem"] for f in listed}
    assert problems["INBOX"] == tripped["flagged_reason"]
    assert problems["Work"] is None

    async with db_pool.acquire() as conn:
        since = await conn.fetchval("SELECT modseq FROM accounts WHERE id = $1", linked.account_id)
        inbox_id = await conn.fetchval(
            "SELECT id FROM folders WHERE account_id = $1 AND path = 'INBOX'", linked.account_id
        )

    # Six hours later (the cool-down), housekeeping clears the breaker; the next pass
    # re-maps INBOX by stable id and picks up the mail it missed meanwhile.
    async with db_pool.acquire() as conn:
        await conn.execute(
            "UPDATE folders SET flagged_at = now() - interval '7 hours' "
            "WHERE account_id = $1 AND path = 'INBOX'",
            linked.account_id,
        )
    housekeeping = {"tombstone_ttl": dt.timedelta(0)}  # every round, not every 10 minutes
    await one_pass(db_pool, linked, **housekeeping)
    retried = (await states(db_pool, linked))["INBOX"]
    assert retried["flagged_reason"] is None and retried["resets"] == 0
    await one_pass(db_pool, linked, **housekeeping)
    healed = (await states(db_pool, linked))["INBOX"]
    assert healed["sync_phase"] == syncing.Phase.SYNCED.value
    assert healed["uidvalidity"] == 5000 + changes
    assert healed["live"] == 11  # the ten kept (re-mapped) and note 99
    feed = await client_changes(api, linked, since=since)
    assert inbox_id in feed["folders"]["updated"], feed  # the app refetches its sync_problem
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        listed = (await client.get("/v1/folders")).json()["folders"]
    assert {f["path"]: f["sync_problem"] for f in listed}["INBOX"] is None


async def client_changes(api: RunningApi, linked: Linked, since: int) -> Any:
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        answer = await client.get("/v1/changes", params={"since": since})
    assert answer.status_code == 200, answer.text
    return answer.json()
