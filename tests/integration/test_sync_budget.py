"""A batch of large mail is fetched and committed in pieces of at most ``batch_bytes``, so the
worker never holds a whole batch of big messages; the result is the same as one batch."""

from __future__ import annotations

import hashlib

from mailish.domain import syncing as sm
from mailish.mail.imap.session import ImapSession
from mailish.store.connecting import Pool
from mailish.store.folders import list_folders
from mailish.worker.folder_sync import FolderSync, pieces
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import Linked
from tests.integration.test_sync import assert_converged

MB = 1 << 20


def big_message(i: int, size: int) -> bytes:
    body = (hashlib.sha256(str(i).encode()).hexdigest() * (size // 64 + 1))[:size]
    lines = "\r\n".join(body[k : k + 76] for k in range(0, len(body), 76))
    return f"From: a@example.org\r\nSubject: big {i}\r\n\r\n{lines}\r\n".encode()


def test_pieces_respect_the_budget_and_keep_the_checkpoint_last() -> None:
    state = sm.FolderSyncState(uidvalidity=1)
    store = sm.Store((5, 4, 3, 2, 1), state)
    sizes = {5: 3, 4: 3, 3: 10, 2: 1, 1: 1}
    assert pieces(store, sizes, 6) == [
        ((5, 4), None), ((3,), None), ((2, 1), state),
    ]  # fmt: skip
    assert pieces(store, {}, 6) == [((5, 4, 3, 2, 1), state)]  # sizes unknown: one piece


async def test_large_mail_is_committed_in_pieces_and_converges(
    db_pool: Pool, dovecot: Dovecot, linked: Linked, session: ImapSession, test_ca: LocalCA
) -> None:
    for i in range(7):
        dovecot.deliver(linked.user, big_message(i, MB))
    dovecot.load_maildir(linked.user, 5, seed=9)  # small ones in the same batch
    sync = linked.sync(db_pool)
    await sync._mirror_folder_list(session)
    async with db_pool.acquire() as conn:
        [inbox] = [f for f in await list_folders(conn, account_id=linked.account_id)
                   if f.path == "INBOX"]  # type: ignore[arg-type]  # fmt: skip
    commits: list[int] = []
    driver = FolderSync(
        session=session, pool=db_pool, lease=linked.lease, account_id=linked.account_id,  # type: ignore[arg-type]
        folder=inbox, batch=100, batch_bytes=int(2.5 * MB), on_progress=commits.append,
    )  # fmt: skip
    state = await driver.run_pass()
    assert state.phase is sm.Phase.SYNCED
    assert sum(commits) == 12
    assert len(commits) >= 4 and max(commits) <= 7  # two 1 MB messages per piece at most
    await sync.sync_all(session)
    await assert_converged(db_pool, dovecot, linked, test_ca)
