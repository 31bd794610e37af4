"""HS256 test tokens that the test Dovecot and the test SMTP server both accept.

Dovecot validates them itself (``passdb { driver = oauth2 }`` with local validation against the
same key), so XOAUTH2/OAUTHBEARER paths run against a real server instead of a mock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any

TEST_OAUTH_KEY = b"test-oauth-secret"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(sub: str, *, key: bytes = TEST_OAUTH_KEY, ttl: int = 3600) -> str:
    """Mint an HS256 JWT for ``sub``; a negative ``ttl`` gives an already expired token."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "iat": now, "nbf": now - 5, "exp": now + ttl}
    payload = _b64url(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def verify_token(token: str, *, key: bytes = TEST_OAUTH_KEY) -> str | None:
    """Return the token's ``sub`` if the signature checks out and it has not expired, else None.

    Used by the SMTP test server so that it accepts exactly the tokens Dovecot accepts.
    """
    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64url(expected), signature):
            return None
        claims: Any = json.loads(_b64url_decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    now = time.time()
    if claims.get("exp", 0) <= now or claims.get("nbf", 0) > now:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (not base64-encoded) for ``user`` and ``token``."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"
