"""The default pre-send check: limits a composed message must meet before it is queued.

The API runs it for every way mail leaves (``POST /v1/send`` and sending a draft), before
the operator's optional check service (``services.presend``). Returning human-readable
reasons rather than raising lets the caller show the user why; an empty list means "send it".
"""

from __future__ import annotations

from mailish.domain.composing import Composed


def check_limits(composed: Composed, *, max_size: int, max_recipients: int) -> list[str]:
    """Reasons the message must not be sent as is; empty when it is fine."""
    reasons: list[str] = []
    size = len(composed.raw)
    if size > max_size:
        reasons.append(f"the message is {size} bytes; the limit is {max_size} bytes")
    count = len(composed.recipients)
    if count == 0:
        reasons.append("the message has no recipients")
    elif count > max_recipients:
        reasons.append(f"the message has {count} recipients; the limit is {max_recipients}")
    return reasons
