"""The worker runs account syncs for the buckets it holds, and stops for bad credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import Epoch
from mailish.mail.credentials import KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.observability import metrics
from mailish.services.linking import LinkRequest, link
from mailish.store.connecting import Pool
from mailish.worker.account_sync import SyncTuning
from mailish.worker.assigning import StaticAssigner
from mailish.worker.running import Worker, WorkerTuning
from tests.harness.dovecot import Dovecot

FAST = WorkerTuning(audit_interval=0.1, sync=SyncTuning(poll_interval=5))


async def eventually(check: Callable[[], object], limit: float = 20.0) -> None:
    async with asyncio.timeout(limit):
        while not await check() if asyncio.iscoroutinefunction(check) else not check():
            await asyncio.sleep(0.05)


async def test_worker_syncs_every_account_and_stops_on_auth_failure(
    db_pool: Pool, dovecot: Dovecot, keyring: KeyRing, policy: ConnectionPolicy
) -> None:
    users = [dovecot.add_user() for _ in range(3)]
    for n, user in enumerate(users):
        dovecot.load_maildir(user, 10 + n)
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    linked = [
        await link(
            db_pool,
            LinkRequest(
                email=f"{u.name}@example.test",
                password=u.password,
                imap=endpoint,
                smtp=None,
                username=u.name,
            ),
            keyring=keyring,
            policy=policy,
            buckets=4,
        )
        for u in users
    ]
    # The third user's password changes on the server after linking.
    dovecot.set_password(users[2].name, "changed-elsewhere")
    worker = Worker(
        pool=db_pool,
        assigner=StaticAssigner(buckets=4, owner="w", epoch=Epoch(1)),
        keyring=keyring,
        policy=policy,
        tuning=FAST,
    )
    task = asyncio.create_task(worker.run())
    try:

        async def synced() -> bool:
            async with db_pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT email, status, messages_synced, sync_state FROM accounts ORDER BY email"
                )
            by_email = {r["email"]: r for r in rows}
            ok = [by_email[f"{u.name}@example.test"] for u in users[:2]]
            bad = by_email[f"{users[2].name}@example.test"]
            return (
                all(r["messages_synced"] == 10 + i and r["sync_state"] == "idle"
                    for i, r in enumerate(ok))
                and bad["status"] == "auth_invalid"
            )  # fmt: skip

        await eventually(synced)
        await worker.refresh_missing_users()
        assert metrics.missing_users._value.get() == 1
        failed = worker.runner(linked[2].account_id)
        assert failed is None or not failed.healthy
        # No retry storm: the invalid account is not restarted by later audits.
        await asyncio.sleep(0.5)
        assert worker.runner(linked[2].account_id) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
