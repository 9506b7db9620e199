"""Derived per-user agent tokens (SPEC §5 step 1).

`agt1.` + base64url(HMAC-SHA256(secret, "agent-gateway/v1:" + user_id)): a token opens its own
user only, so an agent holding it cannot spend another user's budget.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

PREFIX = "agt1."


def derive_token(secret: bytes, user_id: str) -> str:
    digest = hmac.new(secret, f"agent-gateway/v1:{user_id}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(token: bytes, secrets: tuple[bytes, ...], user_id: str) -> bool:
    matched = False
    for secret in secrets:  # every secret is tried, so timing does not tell which one matched
        matched |= hmac.compare_digest(token, derive_token(secret, user_id).encode())
    return matched


def secret_matches(token: bytes, secrets: tuple[bytes, ...]) -> bool:
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token, secret)
    return matched
