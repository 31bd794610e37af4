"""``mailish keys rotate``: re-encrypt every stored credential under the key ring's primary key.

Run it after putting a new key first in MAILISH_SECRET_KEYS (and rolling that out to every
process); afterwards the old key can be removed. Safe while workers run:

- rows are read in keyset-paged batches and each batch is written in one short transaction;
- each row is written only if it still holds the blob we read (compare-and-set), so a token
  refresh that lands meanwhile is never overwritten; such a row is re-read and retried;
- a row whose credential lock is held (a token refresh is in flight) is skipped in the batch
  and retried afterwards under the lock, so the refresh never finds its row rewritten;
- a row already under the primary key is left alone, so running it twice changes nothing.

A blob that does not open (unknown key, or copied from another account: the account id is the
associated data) is reported and left as it is; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass

from mailish.cli.database import database
from mailish.cli.keys import keyring
from mailish.config import Settings
from mailish.domain.ids import AccountId
from mailish.mail.credentials import CredentialError, KeyRing
from mailish.store import connecting
from mailish.store import credentials as stored
from mailish.store.connecting import Conn, Pool

log = logging.getLogger(__name__)
DEFAULT_BATCH = 200
RETRIES = 3


@dataclass
class RotationReport:
    primary: str
    scanned: int = 0
    rotated: int = 0
    current: int = 0
    failed: int = 0
    conflicts: int = 0


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``rotate`` to the ``keys`` command's verbs (see keys_command.add_parser)."""
    rotate = verbs.add_parser(
        "rotate",
        help="re-encrypt stored credentials under the primary key",
        description="Re-encrypt every account's credentials under the first key of "
        "MAILISH_SECRET_KEYS, in batches, without overwriting concurrent changes. Idempotent. "
        "Prints a JSON report; exits 1 if some credentials could not be decrypted.",
    )
    rotate.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="N")
    rotate.set_defaults(handler=rotate_command)


async def rotate_command(settings: Settings, args: argparse.Namespace) -> int:
    ring = keyring(settings, local=settings.database_dsn() is None)
    async with database(settings) as dsn:
        pool = await connecting.connect_pool(dsn, min_size=1, max_size=2)
        try:
            report = await rotate(pool, ring, batch_size=max(1, args.batch_size))
        finally:
            await pool.close()
    print(json.dumps(asdict(report)))
    return 1 if report.failed else 0


async def rotate(pool: Pool, ring: KeyRing, *, batch_size: int = DEFAULT_BATCH) -> RotationReport:
    report = RotationReport(ring.primary)
    after: AccountId | None = None
    while True:
        async with pool.acquire() as conn:
            rows = await stored.batch_after(conn, after=after, limit=batch_size)
            if not rows:
                return report
            after = rows[-1][0]
            conflicted: list[AccountId] = []
            async with conn.transaction():
                for account_id, blob in rows:
                    report.scanned += 1
                    locked = await stored.try_lock_account(conn, account_id=account_id)
                    if not (locked and await _rotate_one(conn, ring, report, account_id, blob)):
                        conflicted.append(account_id)
            for account_id in conflicted:
                await _retry(conn, ring, report, account_id)


async def _rotate_one(
    conn: Conn, ring: KeyRing, report: RotationReport, account_id: AccountId, blob: bytes
) -> bool:
    """Re-seal one blob; False only when the row changed under us (a CAS miss)."""
    try:
        if ring.key_id(blob) == ring.primary:
            report.current += 1
            return True
        secret = ring.decrypt(account_id, blob)
    except CredentialError as exc:
        report.failed += 1
        log.warning("cannot rotate credentials: %s", exc, extra={"account_id": str(account_id)})
        return True
    sealed = ring.encrypt(account_id, secret)
    if await stored.compare_and_set(
        conn, account_id=account_id, expected=blob, blob=sealed, key_id=ring.primary
    ):
        report.rotated += 1
        return True
    report.conflicts += 1
    return False


async def _retry(conn: Conn, ring: KeyRing, report: RotationReport, account_id: AccountId) -> None:
    """A row changed between read and write (usually a token refresh): re-read and try again."""
    for _ in range(RETRIES):
        async with conn.transaction():
            await stored.lock_account(conn, account_id=account_id)  # waits out a refresh
            current = await stored.load(conn, account_id=account_id)
            if current is None:  # unlinked meanwhile
                return
            if await _rotate_one(conn, ring, report, account_id, current.blob):
                return
    report.failed += 1
    log.warning("credentials kept changing; not rotated", extra={"account_id": str(account_id)})
