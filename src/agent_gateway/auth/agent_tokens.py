"""Per-user agent tokens (SPEC §5 step 1): a token opens its own user only, so an agent holding
one cannot spend another user's budget, and whoever learns the shared agent secret cannot mint
them: they are derived from AGENT_TOKEN_KEY, a key of their own.

    agt2.<version>.<base64url(HMAC-SHA256(key, "agent-gateway/v2:<user>:<version>"))>
    agt1.<base64url(HMAC-SHA256(key, "agent-gateway/v1:<user>"))>          (version 0, the first format)

A user's tokens below their `revoked_before` version are refused, so revoking one user's
tokens touches nobody else's. AGENT_TOKEN_KEY may list several keys: the first issues, every
one verifies, which is how a key (or the old agent secret, for agt1 tokens derived from it)
is rotated out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

PREFIXES = (b"agt1.", b"agt2.")


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def derive_token(key: bytes, user_id: str, version: int) -> str:
    if version == 0:
        return "agt1." + _mac(key, f"agent-gateway/v1:{user_id}")
    return f"agt2.{version}." + _mac(key, f"agent-gateway/v2:{user_id}:{version}")


def token_version(token: bytes, keys: tuple[bytes, ...], user_id: str) -> int | None:
    """The version of `user_id`'s token under any of `keys`, or None if it is not one."""
    version = 0
    if token.startswith(b"agt2."):
        number, _, _ = token[5:].partition(b".")
        if not number.isdigit() or len(number) > 9:
            return None
        version = int(number)
    matched = False
    for key in keys:  # every key is tried, so timing does not tell which one matched
        matched |= hmac.compare_digest(token, derive_token(key, user_id, version).encode())
    return version if matched else None


def secret_matches(token: bytes, secrets: tuple[bytes, ...]) -> bool:
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token, secret)
    return matched
