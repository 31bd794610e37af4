"""The pre-send check (the seed's spam check): limits first, then an optional HTTP service.

Runs in the API before anything is queued. The service is configured by the operator
(``MAILISH_PRESEND_CHECK_URL``), receives metadata only — never the body — and answers
``{"allow": true}`` or ``{"allow": false, "reason": "..."}``. If it cannot be reached the
send is refused with a retryable error rather than let through unchecked. The service is
called like every other outbound HTTPS peer (``mail.tls.https_client``): verified against the
system store plus ``MAILISH_TLS_CA_FILE``, no proxy settings from the environment, no
redirects followed, and a failed certificate check is named as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import httpx

from mailish.domain.composing import Composed
from mailish.domain.errors import TransientError
from mailish.domain.presend import check_limits
from mailish.mail.tls import describe_tls_failure, https_client, tls_cause

TIMEOUT = 5.0


async def check(
    composed: Composed,
    *,
    account_id: UUID,
    max_size: int,
    max_recipients: int,
    service_url: str | None,
    http: httpx.AsyncClient | None = None,
    ca_files: Sequence[Path] = (),
) -> list[str]:
    """Reasons to refuse the send (empty: allowed)."""
    reasons = check_limits(composed, max_size=max_size, max_recipients=max_recipients)
    if reasons or service_url is None:
        return reasons
    payload = {
        "account_id": str(account_id),
        "message_id": composed.message_id,
        "envelope_from": composed.envelope_from,
        "recipients": list(composed.recipients),
        "size": len(composed.raw),
    }
    try:
        if http is not None:
            answer = await http.post(service_url, json=payload, timeout=TIMEOUT)
        else:
            async with https_client(ca_files, timeout=TIMEOUT) as client:
                answer = await client.post(service_url, json=payload)
        answer.raise_for_status()
        verdict = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        failure = tls_cause(exc)
        if failure is not None:
            host = httpx.URL(service_url).host
            reason = f"TLS: {describe_tls_failure(failure, host)}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise TransientError(f"the pre-send check did not answer ({reason})", delay=30) from exc
    if not isinstance(verdict, dict) or verdict.get("allow") is True:
        return []
    return [str(verdict.get("reason") or "refused by the pre-send check")]
