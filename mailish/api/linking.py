"""Linking and unlinking accounts: ``POST /v1/accounts``, ``DELETE /v1/account``.

Linking proves both logins before anything is written and answers with the first API token.
Unlinking deletes the account row; every table cascades from it (tokens, mail, operations,
outbox, push subscriptions), and the owning worker stops syncing at its next audit.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field, field_validator

from mailish.api.auth import AccountIdDep
from mailish.api.state import StateDep
from mailish.domain.addresses import normalise_address
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import AccountId
from mailish.mail.autoconfig.discovering import DiscoveryFailed, discover
from mailish.mail.credentials import CredentialError, KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkError, LinkRequest, link, verify_imap, verify_smtp
from mailish.services.oauth_login import store_credentials
from mailish.store import accounts

router = APIRouter(prefix="/v1", tags=["accounts"])
_STATUS = {"auth_failed": 401, "tls_failed": 502, "unreachable": 502, "invalid_settings": 422,
           "already_linked": 409}  # fmt: skip


class ServerSettings(BaseModel):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    security: Literal["tls", "starttls", "plain"] = "tls"

    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, Security(self.security))

    @classmethod
    def of(cls, endpoint: Endpoint) -> ServerSettings:
        return cls(host=endpoint.host, port=endpoint.port, security=endpoint.security.value)


class LinkBody(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=4096, repr=False)
    username: str | None = Field(default=None, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    imap: ServerSettings | None = None
    smtp: ServerSettings | None = None

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        return normalise_address(value)


class LinkedOut(BaseModel):
    account_id: str
    token: str
    imap: ServerSettings
    smtp: ServerSettings
    source: str = Field(description="Where the settings came from: request, provider, ispdb...")


@router.post("/accounts", status_code=status.HTTP_201_CREATED, response_model=LinkedOut)
async def link_account(body: LinkBody, state: StateDep) -> LinkedOut:
    if state.keyring is None:
        raise HTTPException(503, detail={"error": "unavailable", "detail": "no key ring"})
    settings = state.settings
    policy = ConnectionPolicy(
        ca_files=settings.tls_ca_file,
        allow_plaintext=settings.allow_plaintext,
        allow_private_hosts=settings.allow_private_hosts,
        timeout=settings.imap_timeout,
    )
    imap, smtp_ = body.imap, body.smtp
    username, source = body.username, "request"
    if imap is None or smtp_ is None:
        try:
            found = await discover(
                body.email, policy=policy, ispdb_base=settings.ispdb_url, cache=state.discovery
            )
        except DiscoveryFailed as exc:
            detail = "no IMAP/SMTP settings found: " + "; ".join(exc.trail)
            raise HTTPException(
                422, detail={"error": "discovery_failed", "detail": detail[:2000]}
            ) from None
        imap = imap or ServerSettings.of(found.imap)
        smtp_ = smtp_ or ServerSettings.of(found.smtp)
        username, source = username or found.username, found.source
    try:
        request = LinkRequest(
            email=body.email, password=body.password, imap=imap.endpoint(),
            smtp=smtp_.endpoint(), display_name=body.display_name, username=username,
        )  # fmt: skip
    except ValueError as exc:
        raise HTTPException(422, detail={"error": "invalid_settings", "detail": str(exc)}) from None
    try:
        linked = await link(
            state.pool, request, keyring=state.keyring, policy=policy, buckets=settings.buckets
        )
    except LinkError as exc:
        raise HTTPException(
            _STATUS.get(exc.code, 400), detail={"error": exc.code, "detail": exc.detail}
        ) from None
    return LinkedOut(
        account_id=str(linked.account_id), token=linked.token, imap=imap, smtp=smtp_,
        source=source,
    )  # fmt: skip


@router.delete("/account", status_code=status.HTTP_204_NO_CONTENT)
async def unlink_account(account_id: AccountIdDep, state: StateDep) -> Response:
    async with state.pool.acquire() as conn:
        await accounts.delete(conn, account_id=account_id)  # type: ignore[arg-type]
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class CredentialsBody(BaseModel):
    password: str = Field(min_length=1, max_length=4096, repr=False)
    username: str | None = Field(default=None, max_length=320)


class CredentialsOut(BaseModel):
    status: str


@router.put("/account/credentials", response_model=CredentialsOut)
async def replace_credentials(
    body: CredentialsBody, account_id: AccountIdDep, state: StateDep
) -> CredentialsOut:
    """Re-authorise an account (e.g. after ``auth_invalid``): the new login is proven on both
    servers first, then sealed; the owning worker resumes syncing at its next audit."""
    if state.keyring is None:
        raise HTTPException(503, detail={"error": "unavailable", "detail": "no key ring"})
    async with state.pool.acquire() as conn:
        record = await accounts.get(conn, account_id=AccountId(account_id))
    if record is None:
        raise HTTPException(404, detail={"error": "not_found", "detail": "no such account"})
    try:
        imap = ServerSettings(**record.settings["imap"]).endpoint()
        smtp_settings = record.settings.get("smtp")
        smtp = ServerSettings(**smtp_settings).endpoint() if smtp_settings else None
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPException(
            409, detail={"error": "invalid_settings", "detail": f"stored settings: {exc}"}
        ) from None
    settings = state.settings
    policy = ConnectionPolicy(
        ca_files=settings.tls_ca_file,
        allow_plaintext=settings.allow_plaintext,
        allow_private_hosts=settings.allow_private_hosts,
        timeout=settings.imap_timeout,
    )
    username = body.username or _stored_username(state.keyring, record)
    request = LinkRequest(
        email=record.email, password=body.password, imap=imap, smtp=smtp, username=username,
    )  # fmt: skip
    try:
        await verify_imap(request, policy)
        await verify_smtp(request, policy)
    except LinkError as exc:
        raise HTTPException(
            _STATUS.get(exc.code, 400), detail={"error": exc.code, "detail": exc.detail}
        ) from None
    secret = {"password": body.password}
    if username:
        secret["username"] = username
    await store_credentials(
        state.pool, state.keyring, account_id=AccountId(account_id), secret=secret,
        auth_kind="password",
    )  # fmt: skip
    return CredentialsOut(status="active")


def _stored_username(keyring: KeyRing, record: accounts.AccountRecord) -> str | None:
    """The login name linked before (when it is not the address), if still readable."""
    if record.credentials is None:
        return None
    try:
        return keyring.decrypt(record.id, record.credentials).get("username")
    except CredentialError:
        return None
