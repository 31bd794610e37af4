"""Device push subscriptions: ``POST /v1/push/subscriptions`` and ``DELETE .../{device_id}``.

The worker that owns the account POSTs to these endpoints (``worker.pushing``), so an
endpoint is a URL we will call from inside our network: it must be ``https`` with a host
name or a public address, and may not carry credentials. ``http`` and loopback or private
addresses are accepted only with ``MAILISH_ALLOW_PRIVATE_HOSTS`` (development). The worker
checks the resolved address again before every push; this check is for early, clear errors.

A device is its ``device_id``: registering again re-points it (upsert). An account has at
most ``MAX_DEVICES`` subscriptions, which bounds the work one new message can cause.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from mailish.api.auth import AccountIdDep
from mailish.api.state import PoolDep, StateDep
from mailish.mail import hosts
from mailish.store import push_subscriptions

router = APIRouter(prefix="/v1/push", tags=["push"])
MAX_DEVICES = 20
MAX_URL = 2048


class SubscriptionIn(BaseModel):
    device_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:~-]+$")
    endpoint: str = Field(min_length=1, max_length=MAX_URL)


class SubscriptionOut(BaseModel):
    device_id: str
    endpoint: str


def endpoint_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a push endpoint, or None if it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "endpoint is not a valid URL"
    schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in schemes:
        return f"endpoint must be an {' or '.join(sorted(schemes))} URL"
    host = parts.hostname
    if not host:
        return "endpoint has no host"
    if parts.username is not None or parts.password is not None:
        return "endpoint must not contain credentials"
    if any(c.isspace() for c in url):
        return "endpoint must not contain whitespace"
    if allow_private:
        return None
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "endpoint must not point at this host"
    address = hosts.literal_address(host)
    if address is None:
        return None  # a name; the worker checks where it resolves before each push
    return None if hosts.is_public(address) else "endpoint must be a public address"


def _error(status: int, code: str, detail: str) -> HTTPException:
    return HTTPException(status, detail={"error": code, "detail": detail})


@router.post("/subscriptions", response_model=SubscriptionOut, status_code=201)
async def subscribe(
    body: SubscriptionIn, account_id: AccountIdDep, pool: PoolDep, state: StateDep,
    response: Response,
) -> SubscriptionOut:  # fmt: skip
    problem = endpoint_problem(body.endpoint, allow_private=state.settings.allow_private_hosts)
    if problem is not None:
        raise _error(422, "invalid_endpoint", problem)
    async with pool.acquire() as conn, conn.transaction():
        devices = await push_subscriptions.list_for(conn, account_id=account_id)
        known = any(d.device_id == body.device_id for d in devices)
        if not known and len(devices) >= MAX_DEVICES:
            raise _error(409, "too_many_devices", f"at most {MAX_DEVICES} devices per account")
        created = await push_subscriptions.upsert(
            conn, account_id=account_id, device_id=body.device_id, endpoint=body.endpoint
        )
    if not created:
        response.status_code = 200
    return SubscriptionOut(device_id=body.device_id, endpoint=body.endpoint)


@router.delete("/subscriptions/{device_id}", status_code=204)
async def unsubscribe(device_id: str, account_id: AccountIdDep, pool: PoolDep) -> Response:
    async with pool.acquire() as conn:
        found = await push_subscriptions.delete(conn, account_id=account_id, device_id=device_id)
    if not found:
        raise _error(404, "not_found", "no such device")
    return Response(status_code=204)
