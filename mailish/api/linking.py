"""Linking and unlinking accounts: ``POST /v1/accounts``, ``DELETE /v1/account``, and
re-authorising: ``PUT /v1/account/credentials``.

Linking proves both logins (a password, or an OAuth2 access token obtained from the grant)
before anything is written and answers with the first API token. Servers come from the
request, the OAuth provider's configuration, or autoconfig discovery, and the answer says
which. Unlinking deletes the account row; every table cascades from it (tokens, mail,
operations, outbox, push subscriptions), and the owning worker stops syncing at its next audit.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from mailish.api.auth import AccountIdDep
from mailish.api.link_models import (
    CredentialsOut,
    LinkBody,
    LinkedOut,
    LoginIn,
    ServerSettings,
    failure,
    known_provider,
    obtain_grant,
)
from mailish.api.state import ApiState, StateDep
from mailish.domain.ids import AccountId
from mailish.mail.autoconfig.discovering import DiscoveryFailed, discover
from mailish.mail.credentials import CredentialError, KeyRing
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import (
    LinkError,
    LinkRequest,
    OAuthLink,
    link,
    verify_imap,
    verify_smtp,
)
from mailish.services.oauth_login import store_credentials
from mailish.store import accounts

router = APIRouter(prefix="/v1", tags=["accounts"])
_STATUS = {"auth_failed": 401, "tls_failed": 502, "unreachable": 502, "invalid_settings": 422,
           "already_linked": 409}  # fmt: skip


def _link_failure(exc: LinkError) -> Exception:
    return failure(_STATUS.get(exc.code, 400), exc.code, exc.detail)


async def _servers(
    body: LinkBody, state: ApiState
) -> tuple[ServerSettings, ServerSettings, str | None, str]:
    """IMAP, SMTP, the login name to use, and where they came from."""
    if body.imap is not None and body.smtp is not None:
        return body.imap, body.smtp, body.username, "request"
    if (
        body.oauth is not None
        and state.broker is not None
        and body.oauth.provider in (state.broker.providers)
    ):
        provider = state.broker.providers.get(body.oauth.provider)
        if provider.imap is not None and provider.smtp is not None:
            return (
                body.imap or ServerSettings.of(provider.imap),
                body.smtp or ServerSettings.of(provider.smtp),
                body.username, "oauth_provider",
            )  # fmt: skip
    try:
        found = await discover(
            body.email, policy=ConnectionPolicy.from_settings(state.settings),
            ispdb_base=state.settings.ispdb_url, cache=state.discovery,
        )  # fmt: skip
    except DiscoveryFailed as exc:
        detail = "no IMAP/SMTP settings found: " + "; ".join(exc.trail)
        raise failure(422, "discovery_failed", detail[:2000]) from None
    except ValueError as exc:  # an address discovery cannot work from (a literal, no dot)
        raise failure(422, "invalid_settings", str(exc)) from None
    return (
        body.imap or ServerSettings.of(found.imap), body.smtp or ServerSettings.of(found.smtp),
        body.username or found.username, found.source,
    )  # fmt: skip


async def _request(
    login: LoginIn, state: ApiState, *, email: str, imap: ServerSettings,
    smtp: ServerSettings | None, username: str | None, display_name: str | None = None,
) -> LinkRequest:  # fmt: skip
    """The link request for this login; an OAuth grant is obtained here (a code is spent)."""
    try:
        imap_endpoint = imap.endpoint()
        smtp_endpoint = smtp.endpoint() if smtp else None
    except ValueError as exc:
        raise failure(422, "invalid_settings", str(exc)) from None
    oauth = None
    if login.oauth is not None:
        grant = await obtain_grant(state.broker, login.oauth)
        oauth = OAuthLink(login.oauth.provider, grant)
    return LinkRequest(
        email=email, password=login.password, oauth=oauth, imap=imap_endpoint,
        smtp=smtp_endpoint, display_name=display_name, username=username,
    )  # fmt: skip


def _keyring(state: ApiState) -> KeyRing:
    if state.keyring is None:
        raise failure(503, "unavailable", "no key ring")
    return state.keyring


@router.post("/accounts", status_code=status.HTTP_201_CREATED, response_model=LinkedOut)
async def link_account(body: LinkBody, state: StateDep) -> LinkedOut:
    keyring = _keyring(state)
    if body.oauth is not None:  # before discovery: a typo in the provider is the user's error
        known_provider(state.broker, body.oauth)
    async with state.pool.acquire() as conn:  # before a code is spent on a duplicate
        if await accounts.find_by_email(conn, email=body.email) is not None:
            raise failure(409, "already_linked", f"{body.email} is already linked")
    imap, smtp_, username, source = await _servers(body, state)
    request = await _request(
        body, state, email=body.email, imap=imap, smtp=smtp_, username=username,
        display_name=body.display_name,
    )  # fmt: skip
    try:
        linked = await link(
            state.pool, request, keyring=keyring,
            policy=ConnectionPolicy.from_settings(state.settings), buckets=state.settings.buckets,
        )  # fmt: skip
    except LinkError as exc:
        raise _link_failure(exc) from None
    return LinkedOut(
        account_id=str(linked.account_id), token=linked.token, imap=imap, smtp=smtp_,
        source=source, auth="oauth2" if request.oauth else "password",
    )  # fmt: skip


@router.delete("/account", status_code=status.HTTP_204_NO_CONTENT)
async def unlink_account(account_id: AccountIdDep, state: StateDep) -> Response:
    async with state.pool.acquire() as conn:
        await accounts.delete(conn, account_id=account_id)  # type: ignore[arg-type]
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/account/credentials", response_model=CredentialsOut)
async def replace_credentials(
    body: LoginIn, account_id: AccountIdDep, state: StateDep
) -> CredentialsOut:
    """Re-authorise an account (e.g. after ``auth_invalid``) with a new password or OAuth
    grant: the new login is proven on both servers first, then sealed; the owning worker
    resumes syncing at its next audit."""
    keyring = _keyring(state)
    async with state.pool.acquire() as conn:
        record = await accounts.get(conn, account_id=AccountId(account_id))
    if record is None:
        raise failure(404, "not_found", "no such account")
    try:
        imap = ServerSettings(**record.settings["imap"])
        smtp_settings = record.settings.get("smtp")
        smtp = ServerSettings(**smtp_settings) if smtp_settings else None
    except (KeyError, TypeError, ValueError) as exc:
        raise failure(409, "invalid_settings", f"stored settings: {exc}") from None
    request = await _request(
        body, state, email=record.email, imap=imap, smtp=smtp,
        username=body.username or _stored_username(keyring, record),
    )  # fmt: skip
    policy = ConnectionPolicy.from_settings(state.settings)
    try:
        await verify_imap(request, policy)
        await verify_smtp(request, policy)
    except LinkError as exc:
        raise _link_failure(exc) from None
    await store_credentials(
        state.pool, keyring, account_id=AccountId(account_id), secret=request.secret(),
        auth_kind=request.auth_kind,
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
