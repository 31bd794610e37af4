"""Ground truth for sync tests: the server's view (stdlib imaplib, independent of our IMAP
client) and the database's view, in the same shape so they can be compared with ==."""

from __future__ import annotations

import hashlib
import imaplib
import re
import ssl
from typing import Any
from uuid import UUID

from mailish.domain.utf7 import decode_mailbox_name
from tests.harness.dovecot import Dovecot, MailUser

Snapshot = dict[str, dict[int, tuple[str, tuple[str, ...]]]]
_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
_FETCH = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")


def _flags(raw: bytes) -> tuple[str, ...]:
    return tuple(sorted(f for f in raw.decode().split() if f.lower() != "\\recent"))


def server_snapshot(dovecot: Dovecot, user: MailUser, ca_file: str) -> Snapshot:
    context = ssl.create_default_context(cafile=ca_file)
    imap = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=context)
    try:
        imap.login(user.name, user.password)
        _, listing = imap.list()
        out: Snapshot = {}
        for line in listing:
            assert isinstance(line, bytes)
            match = _LIST.match(line)
            assert match, line
            if b"\\Noselect" in match["attrs"]:
                continue
            raw_name = match["name"].strip(b'"').decode()
            typ, _ = imap.select('"' + raw_name + '"', readonly=True)
            assert typ == "OK"
            folder: dict[int, tuple[str, tuple[str, ...]]] = {}
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    meta, body = item
                    found = _FETCH.search(meta)
                    assert found, meta
                    folder[int(found[1])] = (hashlib.sha256(body).hexdigest(), _flags(found[2]))
            out[decode_mailbox_name(raw_name)] = folder
        return out
    finally:
        imap.logout()


LOCAL = """
SELECT f.path, m.uid, m.sha256, m.flags, m.id, m.stable_id
FROM folders f LEFT JOIN messages m ON m.folder_id = f.id AND m.expunged_at IS NULL
WHERE f.account_id = $1 AND f.selectable
"""


async def local_snapshot(conn: Any, account_id: UUID) -> Snapshot:
    out: Snapshot = {}
    for row in await conn.fetch(LOCAL, account_id):
        folder = out.setdefault(row["path"], {})
        if row["uid"] is not None:
            folder[row["uid"]] = (row["sha256"].hex(), tuple(sorted(row["flags"])))
    return out


async def message_ids(conn: Any, account_id: UUID) -> dict[str, int]:
    """stable id → message id, for checking that ids survive moves and resets."""
    rows = await conn.fetch(
        "SELECT stable_id, id FROM messages WHERE account_id = $1 AND expunged_at IS NULL",
        account_id,
    )
    return {r["stable_id"]: r["id"] for r in rows}
