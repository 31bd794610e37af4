"""Convergence for fault tests: the store equals the server, with nothing twice.

``local == server`` over {folder: {uid: (sha256, flags)}} already says nothing is missing and
nothing partial is stored (every stored message hashes like the server's). Duplicates would
hide inside the dicts (two live rows for one UID), so they are counted separately.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tests.harness.dovecot import Dovecot, MailUser
from tests.harness.mailboxes import Snapshot, local_snapshot, server_snapshot

DUPLICATE_UIDS = """
SELECT f.path, m.uid, count(*) FROM messages m JOIN folders f ON f.id = m.folder_id
WHERE m.account_id = $1 AND m.expunged_at IS NULL GROUP BY 1, 2 HAVING count(*) > 1
"""


async def converged(
    conn: Any, dovecot: Dovecot, user: MailUser, account_id: UUID, ca_file: str
) -> tuple[Snapshot, Snapshot, list[Any]]:
    """(local, server, duplicate rows); callers compare or poll on them."""
    import asyncio

    server = await asyncio.to_thread(server_snapshot, dovecot, user, ca_file)
    local = await local_snapshot(conn, account_id)
    duplicates = await conn.fetch(DUPLICATE_UIDS, account_id)
    return local, server, list(duplicates)


async def assert_converged(
    conn: Any, dovecot: Dovecot, user: MailUser, account_id: UUID, ca_file: str
) -> Snapshot:
    local, server, duplicates = await converged(conn, dovecot, user, account_id, ca_file)
    assert not duplicates, duplicates
    assert local.keys() == server.keys()
    for path in server:
        assert local[path] == server[path], path
    return server
