"""``GET /v1/changes?since=STATE``: what changed in the account since a state the client holds.

The answer is gap-free and collapsed per object (see ``store.feed``). Errors:

- ``since`` missing or not a decimal state: 422 ``invalid_state``.
- ``since`` below the retained history (``accounts.changes_floor``): 410
  ``cannot_calculate_changes``. The client must resync from scratch.
- ``since`` above the account's current state: 422 ``invalid_state``. Such a state never
  came from this feed (another account's, or one from before a database restore); we do not
  pretend it is current, because the client would keep a cache that silently disagrees.
  Clients treat it like 410.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from mailish.api.auth import AccountIdDep
from mailish.api.state import PoolDep
from mailish.store import feed

router = APIRouter(prefix="/v1", tags=["mail"])
_STATE = re.compile(r"[0-9]{1,19}")
_MAX_STATE = 2**63 - 1


class ObjectChangesOut(BaseModel):
    created: list[int]
    updated: list[int]
    destroyed: list[int]


class ChangesOut(BaseModel):
    state: str
    messages: ObjectChangesOut
    folders: ObjectChangesOut


def _error(status: int, code: str, detail: str) -> HTTPException:
    return HTTPException(status, detail={"error": code, "detail": detail})


def parse_state(raw: str | None) -> int:
    if raw is None:
        raise _error(422, "invalid_state", "the since parameter is required")
    if not _STATE.fullmatch(raw) or int(raw) > _MAX_STATE:
        raise _error(422, "invalid_state", "since must be a state returned by this API")
    return int(raw)


def _out(changes: feed.ObjectChanges) -> ObjectChangesOut:
    return ObjectChangesOut(
        created=list(changes.created),
        updated=list(changes.updated),
        destroyed=list(changes.destroyed),
    )


@router.get(
    "/changes",
    response_model=ChangesOut,
    responses={
        410: {"description": "since is older than the retained history; resync"},
        422: {"description": "since is malformed or newer than the account's state"},
    },
)
async def get_changes(
    account_id: AccountIdDep,
    pool: PoolDep,
    since: Annotated[str | None, Query(description="A state from an earlier answer.")] = None,
) -> ChangesOut:
    since_state = parse_state(since)
    try:
        async with pool.acquire() as conn:
            result = await feed.changes_since(conn, account_id=account_id, since=since_state)
    except feed.CannotCalculateChanges as exc:
        raise _error(410, "cannot_calculate_changes", f"{exc}; resync from scratch") from exc
    except feed.FutureState as exc:
        raise _error(422, "invalid_state", str(exc)) from exc
    if result is None:
        raise _error(404, "not_found", "no such account")
    return ChangesOut(
        state=str(result.state), messages=_out(result.messages), folders=_out(result.folders)
    )
