"""Supabase access tokens (SPEC §6): ES256/RS256 through the project's JWKS, or HS256 with the
legacy JWT secret. Every refusal is an `InvalidSecret` (401) whose message holds no part of the
token; signing keys that cannot be fetched are the platform's trouble, not the user's (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt

from agent_gateway.domain import USER_ID
from agent_gateway.errors import GatewayError, InvalidSecret, ServiceUnavailable
from agent_gateway.upstream.client import UpstreamClient

log = logging.getLogger("agent_gateway.auth")

AUDIENCE = "authenticated"
ROLE = "authenticated"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"

_ALGORITHM_MISMATCH = "The token's algorithm does not match its signing key."


def _pinned_algorithm(jwk: dict[str, Any]) -> str | None:
    """The one algorithm a JWKS key may verify: ES256 for EC P-256, RS256 for RSA, else None."""
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        expected = "ES256"
    elif jwk.get("kty") == "RSA":
        expected = "RS256"
    else:
        # Symmetric ("oct") keys in a public JWKS would let anyone sign; other curves are not Supabase's.
        return None
    # The key's own alg and use may only confirm the pin: an RSA key marked PS256 or "enc" is skipped.
    if jwk.get("alg", expected) != expected or jwk.get("use", "sig") != "sig":
        return None
    return expected


def _parse_jwks(document: object) -> dict[str, jwt.PyJWK]:
    """Usable keys by kid; raises ValueError if `document` is not a JWKS at all."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the document has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        algorithm = _pinned_algorithm(entry) if isinstance(kid, str) else None
        if not isinstance(kid, str) or algorithm is None:
            log.warning("Skipping a Supabase JWKS key that is not an ES256 or RS256 signing key", extra={"kid": kid})
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm=algorithm)
        except jwt.PyJWTError:
            log.warning("Skipping a malformed Supabase JWKS key", extra={"kid": kid})
    return keys


class JWTVerifier:
    """Verifies a Supabase access token and returns its user id (`sub`); raises InvalidSecret (401).

    The JWKS is cached; an unknown kid refetches it, at most once per `refetch_interval`,
    and concurrent callers share that one fetch.
    """

    def __init__(
        self,
        supabase: UpstreamClient | None,
        jwt_secret: str | None,
        *,
        leeway: float = 30,
        refetch_interval: float = 30,
        fetch_timeout: float = 5,
        max_age: float = 600,
    ) -> None:
        self.supabase = supabase
        self.issuer = f"{supabase.base_url}/auth/v1" if supabase is not None else None
        self.jwt_secret = jwt_secret or None
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.fetch_timeout = fetch_timeout
        # Known keys are refetched after this long too, so a key Supabase revoked stops verifying
        # even if no token ever names an unknown kid; a failed refetch keeps the old keys.
        self.max_age = max_age
        self._keys: dict[str, jwt.PyJWK] = {}
        self._attempted_at: float | None = None
        self._fetched_at: float | None = None
        self._fetch_failed = False
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidSecret("The bearer token is not a well-formed JWT.") from None
        # Dispatch on the header's alg, but verify only with the algorithm pinned to the key.
        alg, kid = header.get("alg"), header.get("kid")
        key: jwt.PyJWK | str
        if alg == "HS256":
            key, algorithm = self._secret(kid), "HS256"
        elif alg in ("ES256", "RS256"):
            key = await self._jwks_key(kid, alg)
            algorithm = key.algorithm_name
        else:
            raise InvalidSecret("The token's signing algorithm is not accepted.")
        return self._user_id(self._decode(token, key, algorithm))

    def _secret(self, kid: object) -> str:
        if self.jwt_secret is None:
            raise InvalidSecret("HS256 tokens are not accepted: SUPABASE_JWT_SECRET is not set.")
        # HS256 naming a JWKS key is the key-confusion attack: the "secret" would be a public key.
        if isinstance(kid, str) and kid in self._keys:
            raise InvalidSecret(_ALGORITHM_MISMATCH)
        return self.jwt_secret

    async def _jwks_key(self, kid: object, alg: str) -> jwt.PyJWK:
        if self.supabase is None:
            raise InvalidSecret("ES256/RS256 tokens are not accepted: SUPABASE_URL is not set.")
        if not isinstance(kid, str):
            raise InvalidSecret("The token names no signing key (kid).")
        if kid not in self._keys or self._stale():
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            if self._fetch_failed:
                raise ServiceUnavailable("Cannot verify tokens right now: the Supabase signing keys are unavailable.")
            raise InvalidSecret("The token's signing key is unknown.")
        if key.algorithm_name != alg:
            raise InvalidSecret(_ALGORITHM_MISMATCH)
        return key

    def _stale(self) -> bool:
        return self._fetched_at is not None and time.monotonic() - self._fetched_at > self.max_age

    async def _refresh(self) -> None:
        """Fetches the JWKS unless a fetch was attempted within `refetch_interval`; a failure is logged, not raised."""
        async with self._lock:
            # Callers that queued behind a fetch find it just done and reuse its result.
            if self._attempted_at is not None and time.monotonic() - self._attempted_at < self.refetch_interval:
                return
            try:
                keys = await self._fetch()
            except (GatewayError, ValueError) as exc:
                # Failures count towards the rate limit too, so an outage is not hammered.
                self._attempted_at = time.monotonic()
                self._fetch_failed = True
                log.warning(
                    "Cannot fetch the Supabase JWKS (%s: %s)", type(exc).__name__, exc, extra={"path": JWKS_PATH}
                )
                return
            self._attempted_at = self._fetched_at = time.monotonic()
            self._fetch_failed = False
            self._keys = keys

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        assert self.supabase is not None
        status, document = await self.supabase.get_json(JWKS_PATH, self.fetch_timeout)
        if status != 200:
            raise ValueError(f"the JWKS answered HTTP {status}")
        return _parse_jwks(document)

    def _decode(self, token: str, key: jwt.PyJWK | str, algorithm: str) -> dict[str, Any]:
        """Signature and times (with leeway) by PyJWT; the Supabase claims are checked by `_user_id`."""
        # PyJWT's own messages are not used: some of them quote values taken from the token.
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": False, "verify_iss": False, "verify_sub": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidSecret("The token has expired.") from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise InvalidSecret("The token is not valid yet.") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidSecret("The token has no expiry (exp).") from None
        except jwt.InvalidSignatureError:
            raise InvalidSecret("The token's signature is invalid.") from None
        except jwt.PyJWTError:
            raise InvalidSecret("The token is invalid.") from None

    def _user_id(self, claims: dict[str, Any]) -> str:
        role = claims.get("role")
        # Checked first: the anon and service_role keys also lack aud and carry iss "supabase".
        if role in ("anon", "service_role"):
            raise InvalidSecret("Supabase API keys are not user tokens; send the signed-in user's access token.")
        if role != ROLE:
            raise InvalidSecret(f"The token's role is not '{ROLE}'.")
        # Exact equality: an aud list that merely contains "authenticated" is not a Supabase user token.
        if claims.get("aud") != AUDIENCE:
            raise InvalidSecret(f"The token's audience is not '{AUDIENCE}'.")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidSecret("The token was not issued by this Supabase project.")
        # Anything but an explicit false (or no claim) counts as anonymous.
        if claims.get("is_anonymous", False) is not False:
            raise InvalidSecret("Anonymous Supabase users are not accepted.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not USER_ID.fullmatch(sub):
            raise InvalidSecret("The token has no valid user id (sub).")
        return sub
