"""``mailish keys rotate`` against a real database: re-encryption, AAD binding, no plaintext."""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets

import pytest

from mailish.cli.keys_rotate import rotate_command
from mailish.config import load_settings
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import AccountId, BucketNo, new_account_id
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import CredentialError, KeyRing, format_key, new_key
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.oauth.broker import TokenBroker
from mailish.mail.oauth.providers import ProviderRegistry
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.services.oauth_login import login_for_account
from mailish.store import accounts
from mailish.store import credentials as stored
from mailish.store.connecting import Conn, Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.harness.dumps import pg_dump

K1, K2 = new_key(), new_key()


def ring_text(*keys: tuple[str, bytes]) -> str:
    return ",".join(format_key(kid, key) for kid, key in keys)


async def run_rotate(dsn: str, keys: str, batch_size: int = 2) -> int:
    settings = load_settings(database_url=dsn, secret_keys=keys)
    return await rotate_command(settings, argparse.Namespace(batch_size=batch_size))


async def add_account(pool: Pool, ring: KeyRing, secret: dict[str, str]) -> AccountId:
    account_id = new_account_id()
    async with pool.acquire() as conn:
        await accounts.create(
            conn, account_id=account_id, email=f"{account_id.hex[:10]}@example.test",
            display_name=None, bucket=BucketNo(0), provider=None, settings={},
            auth_kind="password", credentials=ring.encrypt(account_id, secret), key_id=ring.primary,
        )  # fmt: skip
    return account_id


async def all_blobs(pool: Pool) -> dict[AccountId, bytes]:
    async with pool.acquire() as conn:
        return dict(await stored.batch_after(conn, after=None, limit=1000))


async def test_rotate_reencrypts_under_the_primary_and_logins_still_work(
    db_dsn: str, db_pool: Pool, dovecot: Dovecot, test_ca: LocalCA, policy: ConnectionPolicy,
) -> None:  # fmt: skip
    canary = "canary-" + secrets.token_hex(8)
    user = dovecot.add_user(password=canary)
    old = KeyRing({"k1": K1}, "k1")
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    linked = await link(
        db_pool,
        LinkRequest(email=f"{user.name}@example.test", password=canary, imap=endpoint,
                    smtp=None, username=user.name),
        keyring=old, policy=policy, buckets=4,
    )  # fmt: skip
    others = [await add_account(db_pool, old, {"password": f"other-{i}"}) for i in range(4)]
    before = {aid: old.decrypt(aid, blob) for aid, blob in (await all_blobs(db_pool)).items()}

    keys = ring_text(("k2", K2), ("k1", K1))
    assert await run_rotate(db_dsn, keys) == 0
    new = KeyRing.parse(keys)
    blobs = await all_blobs(db_pool)
    assert set(blobs) == {linked.account_id, *others}
    for account_id, blob in blobs.items():
        assert new.key_id(blob) == "k2"
        assert new.decrypt(account_id, blob) == before[account_id]
    async with db_pool.acquire() as conn:
        assert await stored.count_by_key_id(conn) == {"k2": 5}

    assert await run_rotate(db_dsn, keys) == 0  # idempotent: nothing left to change
    assert await all_blobs(db_pool) == blobs

    async with db_pool.acquire() as conn:
        record = await accounts.get(conn, account_id=linked.account_id)
    assert record is not None
    only_k2 = KeyRing({"k2": K2}, "k2")  # the old key can go now
    broker = TokenBroker(ProviderRegistry({}))
    try:
        login = await login_for_account(db_pool, only_k2, broker, record)
    finally:
        await broker.aclose()
    assert login == PasswordLogin(user.name, canary)
    settings = ImapSettings(endpoint, ca_files=(test_ca.ca_file,), allow_private_hosts=True)
    conn_imap = await ImapConnection.open(settings)
    try:
        await conn_imap.login(login)
    finally:
        await conn_imap.logout()

    dump = pg_dump(db_dsn)
    assert blobs[linked.account_id].hex().encode() in dump  # the dump does hold the rows
    for form in (canary.encode(), canary.encode().hex().encode(),
                 base64.b64encode(canary.encode())):  # fmt: skip
        assert form not in dump


async def test_a_blob_copied_to_another_account_does_not_open(db_dsn: str, db_pool: Pool) -> None:
    ring = KeyRing({"k1": K1}, "k1")
    victim = await add_account(db_pool, ring, {"password": "victim-secret"})
    thief = await add_account(db_pool, ring, {"password": "thief"})
    blobs = await all_blobs(db_pool)
    async with db_pool.acquire() as conn:
        assert await stored.compare_and_set(
            conn, account_id=thief, expected=blobs[thief], blob=blobs[victim], key_id="k1"
        )
    with pytest.raises(CredentialError, match="does not belong"):
        ring.decrypt(thief, blobs[victim])

    # rotation reports the foreign blob, leaves it alone, and still rotates the rest
    assert await run_rotate(db_dsn, ring_text(("k2", K2), ("k1", K1))) == 1
    after = await all_blobs(db_pool)
    assert after[thief] == blobs[victim]
    assert KeyRing.parse(ring_text(("k2", K2))).key_id(after[victim]) == "k2"


async def test_compare_and_set_refuses_a_stale_blob(db_pool: Pool) -> None:
    ring = KeyRing({"k1": K1}, "k1")
    account_id = await add_account(db_pool, ring, {"password": "a"})
    stale = (await all_blobs(db_pool))[account_id]
    fresh = ring.encrypt(account_id, {"password": "b"})
    async with db_pool.acquire() as conn:
        assert await stored.compare_and_set(
            conn, account_id=account_id, expected=stale, blob=fresh, key_id="k1"
        )
        assert not await stored.compare_and_set(
            conn, account_id=account_id, expected=stale, blob=ring.encrypt(account_id, {}),
            key_id="k1",
        )  # fmt: skip
    assert ring.decrypt(account_id, (await all_blobs(db_pool))[account_id]) == {"password": "b"}


async def test_a_row_changed_during_rotation_is_reread_not_overwritten(
    db_dsn: str, db_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token refresh lands between the batch read and the write: the refresh wins, and the
    row is then re-read and rotated with the refreshed secret."""
    old = KeyRing({"k1": K1}, "k1")
    account_id = await add_account(db_pool, old, {"refresh_token": "rt-1"})
    real = stored.compare_and_set
    raced = False

    async def racing_cas(
        conn: Conn, *, account_id: AccountId, expected: bytes, blob: bytes, key_id: str
    ) -> bool:
        nonlocal raced
        if not raced:
            raced = True
            async with db_pool.acquire() as other:  # the "worker", on its own connection
                assert await real(other, account_id=account_id, expected=expected,
                                  blob=old.encrypt(account_id, {"refresh_token": "rt-2"}),
                                  key_id="k1")  # fmt: skip
        return await real(conn, account_id=account_id, expected=expected, blob=blob, key_id=key_id)

    monkeypatch.setattr(stored, "compare_and_set", racing_cas)
    keys = ring_text(("k2", K2), ("k1", K1))
    assert await run_rotate(db_dsn, keys) == 0
    blob = (await all_blobs(db_pool))[account_id]
    new = KeyRing.parse(keys)
    assert new.key_id(blob) == "k2"
    assert new.decrypt(account_id, blob) == {"refresh_token": "rt-2"}


async def test_rotation_waits_for_an_in_flight_refresh(db_dsn: str, db_pool: Pool) -> None:
    """While a refresh holds the account's credential lock, rotation leaves the row alone and
    comes back to it under the lock once the refresh has committed its new token."""
    old = KeyRing({"k1": K1}, "k1")
    account_id = await add_account(db_pool, old, {"refresh_token": "rt-1"})
    keys = ring_text(("k2", K2), ("k1", K1))
    async with db_pool.acquire() as worker, worker.transaction():
        await stored.lock_account(worker, account_id=account_id)
        row = await stored.load(worker, account_id=account_id)
        assert row is not None
        rotation = asyncio.create_task(run_rotate(db_dsn, keys))
        await asyncio.sleep(0.3)
        assert not rotation.done()
        assert (await all_blobs(db_pool))[account_id] == row.blob  # untouched meanwhile
        assert await stored.compare_and_set(
            worker, account_id=account_id, expected=row.blob, key_id="k1",
            blob=old.encrypt(account_id, {"refresh_token": "rt-2"}),
        )  # fmt: skip
    assert await rotation == 0
    blob = (await all_blobs(db_pool))[account_id]
    assert KeyRing.parse(keys).decrypt(account_id, blob) == {"refresh_token": "rt-2"}
    assert old.key_id(blob) == "k2"
