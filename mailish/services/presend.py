"""The pre-send check (the seed's spam check): limits first, then an optional HTTP service.

Runs in the API before anything is queued. The service is configured by the operator
(``MAILISH_PRESEND_CHECK_URL``), receives metadata only — never the body — and answers
``{"allow": true}`` or ``{"allow": false, "reason": "..."}``. If it cannot be reached the
send is refused with a retryable error rather than let through unchecked.
"""

from __future__ import annotations

from uuid import UUID

import httpx

from mailish.domain.composing import Composed
from mailish.domain.errors import TransientError
from mailish.domain.presend import check_limits

TIMEOUT = 5.0


async def check(
    composed: Composed,
    *,
    account_id: UUID,
    max_size: int,
    max_recipients: int,
    service_url: str | None,
    http: httpx.AsyncClient | None = None,
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
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                answer = await client.post(service_url, json=payload)
        answer.raise_for_status()
        verdict = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TransientError(f"the pre-send check did not answer ({exc})", delay=30) from exc
    if not isinstance(verdict, dict) or verdict.get("allow") is True:
        return []
    return [str(verdict.get("reason") or "refused by the pre-send check")]
