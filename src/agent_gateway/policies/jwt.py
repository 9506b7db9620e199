from __future__ import annotations

from agent_gateway.auth.jwt import JWTVerifier
from agent_gateway.domain import canonical_user_id
from agent_gateway.errors import InvalidSecret
from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Policy


class JWTPolicy(Policy):
    """The bearer is a valid Supabase access token of a signed-in user (else 401); its `sub`
    becomes `ctx.user_id`."""

    summary = "a signed-in user's Supabase token (401)"

    def __init__(self, verifier: JWTVerifier | None) -> None:
        self.verifier = verifier

    async def check(self, ctx: RequestContext) -> None:
        if self.verifier is None:
            raise InvalidSecret("User sign-in is not configured (SUPABASE_URL or SUPABASE_JWT_SECRET).")
        authorization = ctx.header(b"authorization")
        if authorization is None or authorization[:7].lower() != b"bearer ":
            raise InvalidSecret("Missing bearer token.")
        ctx.token = authorization[7:].strip().decode("latin-1")
        ctx.user_id = canonical_user_id(await self.verifier.verify(ctx.token))
