"""Supabase token verification against a real JWKS server on loopback, tokens minted with PyJWT."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from agent_gateway.auth.jwt import JWTVerifier
from agent_gateway.errors import InvalidSecret, ServiceUnavailable
from agent_gateway.upstream.client import UpstreamClient

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER = "3f2b8a1c-5d4e-4f6a-9b7c-1e2d3f4a5b6c"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def generate(cls, alg: str) -> SigningKey:
        if alg == "ES256":
            return cls(f"ec-{uuid.uuid4().hex[:8]}", alg, ec.generate_private_key(ec.SECP256R1()))
        return cls(f"rsa-{uuid.uuid4().hex[:8]}", alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class FakeSupabase:
    """Serves `jwks` at the Supabase JWKS path and counts the fetches; can fail or stall."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        self.delay = 0.0
        self.body: str | None = None  # served instead of the JWKS when set
        self.url = ""

    def publish(self, *keys: SigningKey) -> None:
        self.jwks = [key.public_jwk() for key in keys]

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="upstream trouble")
        if self.body is not None:
            return web.Response(text=self.body, content_type="application/json")
        return web.json_response({"keys": self.jwks})


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    # RSA generation is slow, so the keys are made once and rotated by what the server publishes.
    return {name: SigningKey.generate(name[:5]) for name in ("ES256-a", "ES256-b", "RS256-a", "RS256-b")}


@pytest.fixture
async def supabase(keys: dict[str, SigningKey]) -> AsyncIterator[FakeSupabase]:
    fake = FakeSupabase()
    fake.publish(keys["ES256-a"], keys["RS256-a"])
    app = web.Application()
    app.router.add_get("/auth/v1/.well-known/jwks.json", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    await runner.cleanup()


Upstream = Callable[[str], Awaitable[UpstreamClient]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """Supabase as the gateway reaches it: through the upstream boundary."""
    started: list[UpstreamClient] = []

    async def client(url: str) -> UpstreamClient:
        started.append(UpstreamClient("supabase", url))
        await started[-1].start()
        return started[-1]

    yield client
    for client_ in started:
        await client_.close()


@pytest.fixture
async def verifier(supabase: FakeSupabase, upstream: Upstream) -> JWTVerifier:
    return JWTVerifier(await upstream(supabase.url), SECRET)


def claims(supabase: FakeSupabase, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": f"{supabase.url}/auth/v1",
        "sub": USER,
        "aud": "authenticated",
        "role": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "ada@example.com",
        "is_anonymous": False,
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def mint(key: SigningKey, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})


def mint_hs256(payload: dict[str, Any], secret: str | bytes = SECRET, **header: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=header or None)


def forge(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand, for what PyJWT refuses to sign (HMAC with a PEM, `alg: none`)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{part(signature)}"


async def refused(verifier: JWTVerifier, token: str) -> str:
    """Asserts a 401 whose message holds no piece of the token, and returns the message."""
    with pytest.raises(InvalidSecret) as info:
        await verifier.verify(token)
    error = info.value
    assert error.status_code == 401
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    message = str(error)
    assert message
    for piece in [token, *token.split(".")]:
        assert len(piece) < 6 or piece not in message
    return message


# Valid tokens


async def test_es256_token_returns_user_id(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    assert await verifier.verify(mint(keys["ES256-a"], claims(supabase))) == USER


async def test_rs256_token_returns_user_id(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    assert await verifier.verify(mint(keys["RS256-a"], claims(supabase))) == USER


async def test_jwks_is_cached(verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]) -> None:
    for _ in range(5):
        assert await verifier.verify(mint(keys["ES256-a"], claims(supabase))) == USER
        assert await verifier.verify(mint(keys["RS256-a"], claims(supabase))) == USER
    assert supabase.hits == 1


async def test_hs256_with_jwt_secret_returns_user_id(verifier: JWTVerifier, supabase: FakeSupabase) -> None:
    assert await verifier.verify(mint_hs256(claims(supabase))) == USER
    # Supabase's legacy secret can carry a kid of its own, which the JWKS never lists.
    assert await verifier.verify(mint_hs256(claims(supabase), kid="legacy-secret")) == USER
    assert supabase.hits == 0


async def test_expired_within_leeway_passes(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    now = int(time.time())
    token = mint(keys["ES256-a"], claims(supabase, exp=now - 20, iat=now - 3620))
    assert await verifier.verify(token) == USER


async def test_issued_slightly_in_the_future_passes(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    # A Supabase clock a little ahead of ours must not lock users out.
    now = int(time.time())
    assert await verifier.verify(mint(keys["ES256-a"], claims(supabase, iat=now + 20, nbf=now + 20))) == USER


async def test_without_supabase_url_issuer_is_not_checked(upstream: Upstream) -> None:
    verifier = JWTVerifier(None, SECRET)
    payload = {"sub": USER, "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 60}
    assert await verifier.verify(mint_hs256({**payload, "iss": "https://elsewhere.example/auth/v1"})) == USER
    assert await verifier.verify(mint_hs256(payload)) == USER


# Key rotation and the JWKS cache


async def test_new_key_verifies_after_refetch_and_removed_key_stops(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None, refetch_interval=0.2)
    old, new, newer = keys["ES256-a"], keys["ES256-b"], keys["RS256-b"]
    assert await verifier.verify(mint(old, claims(supabase))) == USER

    supabase.publish(old, new)
    await asyncio.sleep(0.25)
    assert await verifier.verify(mint(new, claims(supabase))) == USER
    assert supabase.hits == 2

    # Supabase revokes the old key and publishes another; the first token naming it refetches.
    supabase.publish(new, newer)
    await asyncio.sleep(0.25)
    assert await verifier.verify(mint(newer, claims(supabase))) == USER
    assert "unknown" in await refused(verifier, mint(old, claims(supabase)))
    assert await verifier.verify(mint(new, claims(supabase))) == USER
    assert supabase.hits == 3


async def test_unknown_kids_refetch_at_most_once_per_interval(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None, refetch_interval=30)
    assert await verifier.verify(mint(keys["ES256-a"], claims(supabase))) == USER
    supabase.publish(keys["ES256-a"], keys["ES256-b"])
    # A flood of unknown kids (a new key, or junk) within the interval does not reach Supabase.
    for kid in ["bogus-1", "bogus-2", keys["ES256-b"].kid, "bogus-3"]:
        token = mint(keys["ES256-b"], claims(supabase), kid=kid)
        assert "unknown" in await refused(verifier, token)
    assert supabase.hits == 1


async def test_concurrent_unknown_kids_share_one_fetch(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None)
    supabase.publish(*keys.values())
    supabase.delay = 0.1
    good = [mint(key, claims(supabase)) for key in keys.values()] * 5
    bogus = [mint(keys["ES256-a"], claims(supabase), kid=f"bogus-{n}") for n in range(5)]
    results = await asyncio.gather(*(verifier.verify(token) for token in good + bogus), return_exceptions=True)
    assert results[: len(good)] == [USER] * len(good)
    assert all(isinstance(result, InvalidSecret) for result in results[len(good) :])
    assert supabase.hits == 1


async def test_known_keys_are_refreshed_when_old(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    # A revoked key stops verifying within max_age even if no token ever names a new kid.
    verifier = JWTVerifier(await upstream(supabase.url), None, refetch_interval=0.1, max_age=0.2)
    token = mint(keys["ES256-a"], claims(supabase))
    assert await verifier.verify(token) == USER
    supabase.publish(keys["ES256-b"])
    await asyncio.sleep(0.25)
    await refused(verifier, token)
    assert supabase.hits == 2


# JWKS unavailable


async def unavailable(verifier: JWTVerifier, token: str) -> str:
    """Asserts a 503 (the signing keys are the platform's trouble, not the user's), and returns its message."""
    with pytest.raises(ServiceUnavailable) as info:
        await verifier.verify(token)
    assert info.value.status_code == 503 and token.split(".")[2] not in str(info.value)
    return str(info.value)


async def test_jwks_server_down_is_503(
    upstream: Upstream, keys: dict[str, SigningKey], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    verifier = JWTVerifier(await upstream(url), None)
    token = mint(keys["ES256-a"], claims(FakeSupabase(), iss=f"{url}/auth/v1"))
    with caplog.at_level(logging.WARNING, logger="agent_gateway.auth"):
        assert "right now" in await unavailable(verifier, token)
    # The boundary's line with the cause, then the verifier's own: the token in neither.
    assert [record.name for record in caplog.records] == ["agent_gateway.upstream", "agent_gateway.auth"]
    assert token.split(".")[2] not in caplog.text


@pytest.mark.parametrize("trouble", ["status 503", "not json", "not a jwks", "stall"])
async def test_jwks_failures_are_503(
    trouble: str, supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None, fetch_timeout=0.2)
    if trouble == "status 503":
        supabase.status = 503
    elif trouble == "not json":
        supabase.body = "<html>maintenance</html>"
    elif trouble == "not a jwks":
        supabase.body = '{"error": "nope"}'
    else:
        supabase.delay = 1.0
    assert "right now" in await unavailable(verifier, mint(keys["ES256-a"], claims(supabase)))


async def test_jwks_outage_is_not_hammered(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None)
    supabase.status = 503
    for _ in range(5):
        await unavailable(verifier, mint(keys["ES256-a"], claims(supabase)))
    assert supabase.hits == 1


async def test_verifies_again_once_jwks_is_back(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None, refetch_interval=0.2)
    supabase.status = 500
    token = mint(keys["ES256-a"], claims(supabase))
    await unavailable(verifier, token)
    supabase.status = 200
    await asyncio.sleep(0.25)
    assert await verifier.verify(token) == USER


# Algorithms


async def test_alg_none_is_refused(verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]) -> None:
    for header in [{"alg": "none"}, {"alg": "none", "kid": keys["ES256-a"].kid}, {"alg": "None"}]:
        await refused(verifier, forge(header, claims(supabase), None))
    await refused(verifier, jwt.encode(claims(supabase), "", algorithm="none"))


@pytest.mark.parametrize("name", ["ES256-a", "RS256-a"])
async def test_hs256_signed_with_public_key_is_refused(
    name: str, verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    key = keys[name]
    payload = claims(supabase)
    # Before and after the JWKS is cached, with and without naming the key.
    await refused(verifier, forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload, key.public_pem()))
    assert await verifier.verify(mint(key, payload)) == USER
    await refused(verifier, forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload, key.public_pem()))
    await refused(verifier, forge({"alg": "HS256", "typ": "JWT"}, payload, key.public_pem()))


async def test_hs256_signed_with_public_key_is_refused_without_secret(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(await upstream(supabase.url), None)
    key = keys["RS256-a"]
    assert await verifier.verify(mint(key, claims(supabase))) == USER
    await refused(verifier, forge({"alg": "HS256", "kid": key.kid}, claims(supabase), key.public_pem()))
    await refused(verifier, mint_hs256(claims(supabase)))


async def test_header_alg_must_match_the_keys_algorithm(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    # An RSA signature presented under the EC key's kid, and the other way round.
    assert "does not match" in await refused(verifier, mint(keys["RS256-a"], claims(supabase), kid=keys["ES256-a"].kid))
    assert "does not match" in await refused(verifier, mint(keys["ES256-a"], claims(supabase), kid=keys["RS256-a"].kid))


async def test_jwks_keys_are_pinned_to_their_key_type(
    supabase: FakeSupabase, upstream: Upstream, keys: dict[str, SigningKey]
) -> None:
    rsa_as_ps256 = {**keys["RS256-a"].public_jwk(), "alg": "PS256"}
    ec_as_rs256 = {**keys["ES256-a"].public_jwk(), "alg": "RS256"}
    # A symmetric key in a public JWKS would let anyone sign; it must never be trusted.
    octet = {"kty": "oct", "kid": "oct-1", "k": base64.urlsafe_b64encode(b"x" * 32).rstrip(b"=").decode()}
    supabase.jwks = [rsa_as_ps256, ec_as_rs256, octet, keys["ES256-b"].public_jwk()]
    verifier = JWTVerifier(await upstream(supabase.url), SECRET)
    assert await verifier.verify(mint(keys["ES256-b"], claims(supabase))) == USER
    await refused(verifier, mint(keys["RS256-a"], claims(supabase)))
    await refused(verifier, mint(keys["ES256-a"], claims(supabase)))
    await refused(verifier, mint_hs256(claims(supabase), secret=b"x" * 32, kid="oct-1"))


@pytest.mark.parametrize("alg", ["HS384", "HS512", "PS256", "ES384", "EdDSA"])
async def test_other_algorithms_are_refused(alg: str, verifier: JWTVerifier, supabase: FakeSupabase) -> None:
    await refused(verifier, forge({"alg": alg, "kid": "whatever"}, claims(supabase), SECRET.encode()))


async def test_asymmetric_tokens_refused_without_supabase_url(
    upstream: Upstream, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    verifier = JWTVerifier(None, None)
    await refused(verifier, mint(keys["ES256-a"], claims(supabase)))
    await refused(verifier, mint_hs256(claims(supabase)))
    assert supabase.hits == 0


async def test_wrong_signature_is_refused(
    verifier: JWTVerifier, supabase: FakeSupabase, keys: dict[str, SigningKey]
) -> None:
    await refused(verifier, mint_hs256(claims(supabase), secret="another-secret-that-is-32-characters-long"))
    header, payload, _ = mint(keys["ES256-a"], claims(supabase)).split(".")
    other = mint(keys["ES256-a"], claims(supabase, sub="someone-else")).split(".")[2]
    assert "signature" in await refused(verifier, f"{header}.{payload}.{other}")


# Claims


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"exp": None}, "exp"),
        ({"nbf": int(time.time()) + 120}, "not valid yet"),
        ({"aud": "anon"}, "audience"),
        ({"aud": ["authenticated", "other"]}, "audience"),
        ({"aud": None}, "audience"),
        ({"iss": "https://evil.supabase.co/auth/v1"}, "issued"),
        ({"iss": None}, "issued"),
        ({"role": "admin"}, "role"),
        ({"role": None}, "role"),
        ({"is_anonymous": True}, "Anonymous"),
        ({"sub": None}, "user id"),
        ({"sub": "../admin"}, "user id"),
        ({"sub": "x" * 129}, "user id"),
        ({"sub": "user\n"}, "user id"),
        ({"sub": ""}, "user id"),
        ({"sub": 42}, "user id"),
    ],
)
@pytest.mark.parametrize("name", ["ES256-a", "RS256-a", "HS256"])
async def test_bad_claims_are_refused(
    change: dict[str, Any],
    reason: str,
    name: str,
    verifier: JWTVerifier,
    supabase: FakeSupabase,
    keys: dict[str, SigningKey],
) -> None:
    payload = claims(supabase, **change)
    token = mint_hs256(payload) if name == "HS256" else mint(keys[name], payload)
    assert reason in await refused(verifier, token)


@pytest.mark.parametrize("role", ["anon", "service_role"])
async def test_supabase_api_keys_are_not_users(role: str, verifier: JWTVerifier) -> None:
    # The shape of the keys Supabase hands out with a legacy JWT secret.
    now = int(time.time())
    key = mint_hs256({"iss": "supabase", "ref": "abcdefghijklmnop", "role": role, "iat": now, "exp": now + 10**8})
    assert "API keys" in await refused(verifier, key)


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", "Bearer xyz", "é.é.é"],
)
async def test_garbage_is_refused(token: str, verifier: JWTVerifier, supabase: FakeSupabase) -> None:
    await refused(verifier, token)
    assert supabase.hits == 0
