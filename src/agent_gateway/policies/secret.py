from __future__ import annotations

from agent_gateway.context import RequestContext
from agent_gateway.errors import InvalidPath, InvalidSecret
from agent_gateway.stores.profiles import USER_ID
from agent_gateway.tokens import PREFIX, secret_matches, token_matches

_PREFIX = PREFIX.encode()


class SecretPolicy:
    """The path's user id is well-formed (400) and the bearer is an agent secret or that
    user's derived token (401). Runs before any byte of the body is read."""

    def __init__(self, secrets: tuple[bytes, ...], tokens_only: bool) -> None:
        self.secrets = secrets
        self.tokens_only = tokens_only

    async def check(self, ctx: RequestContext) -> None:
        if not USER_ID.match(ctx.user_id):
            raise InvalidPath(param="user_id")
        authorization = ctx.header(b"authorization")
        if not self.secrets or authorization is None or authorization[:7].lower() != b"bearer ":
            raise InvalidSecret()
        token = authorization[7:].strip()
        if token.startswith(_PREFIX):
            accepted = token_matches(token, self.secrets, ctx.user_id)
        else:
            accepted = not self.tokens_only and secret_matches(token, self.secrets)
        if not accepted:
            raise InvalidSecret()
