"""What the lifespan puts on ``app.state`` and the dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from mailish.config import Settings
from mailish.mail.autoconfig.discovering import DiscoveryCache
from mailish.mail.credentials import KeyRing
from mailish.mail.oauth.broker import TokenBroker
from mailish.store.connecting import Pool


@dataclass(frozen=True, slots=True)
class ApiState:
    settings: Settings
    pool: Pool
    keyring: KeyRing | None = None
    #: OAuth2 token endpoints and the access-token cache (POST /v1/accounts with ``oauth``).
    broker: TokenBroker | None = None
    #: Autoconfig results per domain for this process (POST /v1/accounts without settings).
    discovery: DiscoveryCache = field(default_factory=DiscoveryCache)


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.mailish
    return state


def _pool(request: Request) -> Pool:
    return _state(request).pool


StateDep = Annotated[ApiState, Depends(_state)]
PoolDep = Annotated[Pool, Depends(_pool)]
