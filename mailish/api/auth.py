"""Bearer-token authentication: every request resolves to exactly one account.

Tokens are looked up by their SHA-256 (the token itself is never stored), revoked tokens
do not match, and every query a route makes is scoped to the resolved account, so another
account's ids simply do not exist from this caller's point of view (404, not 403).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailish.api.state import PoolDep
from mailish.store import tokens

_bearer = HTTPBearer(
    auto_error=False, description="The token returned when the account was linked."
)


async def _account_id(
    request: Request,
    pool: PoolDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UUID:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"error": "unauthorized", "detail": "missing bearer token"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    async with pool.acquire() as conn:
        account_id = await tokens.account_for(conn, token=credentials.credentials)
    if account_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"error": "unauthorized", "detail": "invalid or revoked token"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.account_id = account_id
    return account_id


AccountIdDep = Annotated[UUID, Depends(_account_id)]
