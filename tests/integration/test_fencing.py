"""Epoch fencing against a real PostgreSQL, with concurrent claimants."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mailish.domain.buckets import BucketLease, bucket_for
from mailish.domain.errors import Fenced
from mailish.domain.ids import BucketNo, Epoch
from mailish.store import claims
from mailish.store.connecting import Pool


def lease(bucket: int, owner: str, epoch: int) -> BucketLease:
    return BucketLease(bucket=BucketNo(bucket), owner=owner, epoch=Epoch(epoch))


async def insert_account(conn, bucket: int) -> uuid.UUID:  # type: ignore[no-untyped-def]
    account_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO accounts (id, email, bucket) VALUES ($1, $2, $3)",
        account_id, f"{account_id.hex}@example.com", bucket,
    )  # fmt: skip
    return account_id


async def test_claims_only_move_forward(db_pool: Pool) -> None:
    async with db_pool.acquire() as conn:
        await claims.claim(conn, lease(3, "a", 1))
        await claims.claim(conn, lease(3, "a", 1))  # idempotent re-claim
        await claims.claim(conn, lease(3, "b", 2))
        with pytest.raises(Fenced) as stale:
            await claims.claim(conn, lease(3, "a", 1))
        assert stale.value.current_epoch == 2
        with pytest.raises(Fenced):
            await claims.claim(conn, lease(3, "c", 2))  # same epoch, other owner
        assert await claims.current(conn, bucket=BucketNo(3)) == lease(3, "b", 2)
        assert await claims.highest_epoch(conn) == 2


async def test_stale_epoch_write_is_rejected_and_leaves_nothing(db_pool: Pool) -> None:
    old, new = lease(5, "worker-a", 1), lease(5, "worker-b", 2)
    async with db_pool.acquire() as conn:
        account = await insert_account(conn, 5)
        await claims.claim(conn, old)
        async with claims.fenced(conn, old):
            await conn.execute("UPDATE accounts SET last_error = 'a wrote' WHERE id = $1", account)
        await claims.claim(conn, new)
        with pytest.raises(Fenced):
            async with claims.fenced(conn, old):
                await conn.execute(
                    "UPDATE accounts SET last_error = 'stale write' WHERE id = $1", account
                )
        async with claims.fenced(conn, new):
            pass
        assert await conn.fetchval("SELECT last_error FROM accounts WHERE id=$1", account) == (
            "a wrote"
        )


async def test_two_concurrent_claimants_newest_epoch_wins(db_pool: Pool) -> None:
    """Race many claimants for one bucket; whatever the interleaving, the highest epoch owns
    it, every lower one is fenced, and a fenced claimant can no longer write."""
    for round_no in range(10):
        bucket = 100 + round_no
        contenders = [lease(bucket, f"w{e}", e) for e in (1, 2)] * 3

        async def attempt(candidate: BucketLease) -> BucketLease | None:
            async with db_pool.acquire() as conn:
                try:
                    await claims.claim(conn, candidate)
                except Fenced:
                    return None
                return candidate

        await asyncio.gather(*(attempt(c) for c in contenders))
        async with db_pool.acquire() as conn:
            assert await claims.current(conn, bucket=BucketNo(bucket)) == lease(bucket, "w2", 2)
            with pytest.raises(Fenced):
                async with claims.fenced(conn, lease(bucket, "w1", 1)):
                    pass


async def test_a_claim_waits_for_an_in_flight_fenced_write(db_pool: Pool) -> None:
    """The share lock orders a takeover after writes already in progress, never between a
    check and its writes."""
    old, new = lease(7, "a", 1), lease(7, "b", 2)
    async with db_pool.acquire() as writer, db_pool.acquire() as taker:
        account = await insert_account(writer, 7)
        await claims.claim(writer, old)
        writing = asyncio.Event()
        release = asyncio.Event()

        async def slow_write() -> None:
            async with claims.fenced(writer, old):
                writing.set()
                await release.wait()
                await writer.execute(
                    "UPDATE accounts SET last_error='in flight' WHERE id=$1", account
                )

        write_task = asyncio.create_task(slow_write())
        await writing.wait()
        claim_task = asyncio.create_task(claims.claim(taker, new))
        await asyncio.sleep(0.2)
        assert not claim_task.done(), "the takeover must wait for the in-flight write"
        release.set()
        await write_task
        await claim_task
        assert await taker.fetchval("SELECT last_error FROM accounts WHERE id=$1", account) == (
            "in flight"
        )
        with pytest.raises(Fenced):
            async with claims.fenced(writer, old):
                pass


async def test_lost_reports_superseded_leases_in_one_query(db_pool: Pool) -> None:
    async with db_pool.acquire() as conn:
        mine = [lease(b, "me", 4) for b in range(4)]
        for held in mine:
            await claims.claim(conn, held)
        await claims.claim(conn, lease(2, "other", 5))
        assert await claims.lost(conn, mine) == {mine[2]}


def test_bucket_for_is_stable_and_in_range() -> None:
    account = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert bucket_for(account, 64) == bucket_for(account, 64)
    assert all(0 <= bucket_for(uuid.uuid4(), 7) < 7 for _ in range(200))
