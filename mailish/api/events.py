"""``GET /v1/events``: a Server-Sent Events stream of the account's state.

**One LISTEN per process.** The lifespan runs ``fan_out``: one ``feed.ChangeListener`` (one
dedicated PostgreSQL connection) feeds a ``Hub`` that keeps, per account, the set of open
streams. A notification costs one dict lookup plus one wake-up per stream of that account.
Streams hold no database connection.

**Bounded per client.** A stream only ever needs the newest state, so a subscription is a
single slot (the highest state offered) plus a wake-up flag, not a queue: a slow client gets
coalesced states and costs constant memory however far it falls behind.

**Nothing missed.** A stream subscribes *before* it reads the current state for its first
event; anything committed after that read is notified to the slot, anything before is in the
read. When the listener reconnects it re-reads the state of every subscribed account
(``Hub.refresh``), because notifications sent while it was down are gone. States only go
up, so a late or duplicate notification is dropped, never sent backwards.

Heartbeats are SSE comments every ``HEARTBEAT_SECONDS`` (proxies close idle streams).
Uvicorn waits for open streams at shutdown; ``Hub.close`` ends them all promptly, so call
it before telling the server to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from mailish.api.auth import AccountIdDep
from mailish.api.state import PoolDep
from mailish.store import feed, views
from mailish.store.connecting import Pool

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["events"])
HEARTBEAT_SECONDS = 15.0
RETRY_MILLISECONDS = 2000
LISTENER_NAME = "mailish-api-events"


class Subscription:
    """One stream's mailbox: the newest state offered and whether it is unread."""

    __slots__ = ("latest", "wake")

    def __init__(self) -> None:
        self.latest = -1
        self.wake = asyncio.Event()

    def offer(self, state: int) -> None:
        if state > self.latest:
            self.latest = state
            self.wake.set()


class Hub:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._streams: dict[UUID, set[Subscription]] = {}
        self.closed = False

    def subscribe(self, account_id: UUID) -> Subscription:
        subscription = Subscription()
        self._streams.setdefault(account_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, account_id: UUID, subscription: Subscription) -> None:
        streams = self._streams.get(account_id)
        if streams is not None:
            streams.discard(subscription)
            if not streams:
                del self._streams[account_id]

    def streams(self, account_id: UUID | None = None) -> int:
        if account_id is not None:
            return len(self._streams.get(account_id, ()))
        return sum(len(s) for s in self._streams.values())

    def dispatch(self, account_id: UUID, state: int) -> None:
        """The listener's callback: wake every stream of the account."""
        for subscription in self._streams.get(account_id, ()):
            subscription.offer(state)

    async def refresh(self) -> None:
        """After a (re)connect of the listener: offer every subscribed account its state."""
        if not self._streams:
            return
        async with self._pool.acquire() as conn:
            states = await feed.current_states(conn, account_ids=list(self._streams))
        for account_id, state in states.items():
            self.dispatch(account_id, state)

    def close(self) -> None:
        """End every stream (server shutdown); new streams end at once."""
        self.closed = True
        for streams in self._streams.values():
            for subscription in streams:
                subscription.wake.set()


@contextlib.asynccontextmanager
async def fan_out(app: FastAPI, *, pool: Pool, dsn: str) -> AsyncIterator[Hub]:
    """For the lifespan: the process's one listener and hub, stopped cleanly on exit."""
    hub = Hub(pool)
    listener = feed.ChangeListener(
        dsn, on_change=hub.dispatch, on_listen=hub.refresh, application_name=LISTENER_NAME
    )
    task = asyncio.create_task(listener.run(), name="events-listener")
    app.state.mailish_events = hub
    app.state.mailish_listener = listener
    try:
        yield hub
    finally:
        hub.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.mailish_events
    return hub


HubDep = Annotated[Hub, Depends(_hub)]


def _event(state: int) -> bytes:
    return f"data: {json.dumps({'state': str(state)})}\n\n".encode()


async def _stream(hub: Hub, pool: Pool, account_id: UUID) -> AsyncIterator[bytes]:
    """Subscribe, then read: balanced by the ``finally`` even if the client leaves early."""
    subscription = hub.subscribe(account_id)
    try:
        async with pool.acquire() as conn:
            sent = await views.state(conn, account_id=account_id)
        yield f"retry: {RETRY_MILLISECONDS}\n".encode() + _event(sent)
        while not hub.closed:
            try:
                await asyncio.wait_for(subscription.wake.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            subscription.wake.clear()
            if subscription.latest > sent and not hub.closed:
                sent = subscription.latest
                yield _event(sent)
    finally:
        hub.unsubscribe(account_id, subscription)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": 'data: {"state"}'}},
)
async def events(account_id: AccountIdDep, pool: PoolDep, hub: HubDep) -> StreamingResponse:
    return StreamingResponse(
        _stream(hub, pool, account_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
