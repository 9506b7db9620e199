from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from agent_gateway.auth.agent_tokens import PREFIXES, secret_matches, token_version
from agent_gateway.domain import USER_ID, canonical_user_id
from agent_gateway.errors import InvalidPath, InvalidSecret
from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Policy
from agent_gateway.stores.token_versions import TokenVersions

Networks = tuple[IPv4Network | IPv6Network, ...]


class SecretPolicy(Policy):
    """The path's user id is well-formed (400; a UUID in any spelling is the user's one id) and
    the bearer is that user's own unrevoked agent token, or the shared agent secret, from
    AGENT_ALLOWED_NETWORKS when set and unless AGENT_TOKENS_ONLY (401). Runs before any byte of
    the body is read."""

    summary = "the agent secret or the user's own agent token (401)"

    def __init__(
        self,
        secrets: tuple[bytes, ...],
        token_keys: tuple[bytes, ...],
        versions: TokenVersions,
        *,
        tokens_only: bool = False,
        networks: Networks = (),
        proxies: Networks = (),
    ) -> None:
        self.secrets = secrets
        self.token_keys = token_keys
        self.versions = versions
        self.tokens_only = tokens_only
        self.networks = networks
        self.proxies = proxies

    async def check(self, ctx: RequestContext) -> None:
        if not USER_ID.match(ctx.user_id):
            raise InvalidPath(param="user_id")
        ctx.user_id = canonical_user_id(ctx.user_id)
        authorization = ctx.header(b"authorization")
        if authorization is None or authorization[:7].lower() != b"bearer ":
            raise InvalidSecret()
        token = authorization[7:].strip()
        if token.startswith(PREFIXES):
            version = token_version(token, self.token_keys, ctx.user_id) if self.token_keys else None
            if version is None or version < await self.versions.revoked_before(ctx.user_id):
                raise InvalidSecret()
            return
        if self.tokens_only or not self.secrets or not secret_matches(token, self.secrets):
            raise InvalidSecret()
        if self.networks and not self._from_allowed_network(ctx):
            # The secret opens every user: from anywhere but Letta's networks it is taken as leaked.
            raise InvalidSecret("The agent secret is not accepted from this address.")

    def _from_allowed_network(self, ctx: RequestContext) -> bool:
        client = client_address(ctx.peer, ctx.header_list(b"x-forwarded-for"), self.proxies)
        return client is not None and any(client in network for network in self.networks)


def client_address(
    peer: str | None, forwarded_for: bytes | None, proxies: Networks
) -> IPv4Address | IPv6Address | None:
    """The client: the peer, or behind trusted proxies the last address they forwarded for that is not one of theirs."""
    try:
        address = ip_address(peer) if peer else None
        hops = [ip_address(hop.strip()) for hop in forwarded_for.decode("latin-1").split(",")] if forwarded_for else []
    except ValueError:
        return None
    while address is not None and hops and any(address in proxy for proxy in proxies):
        address = hops.pop()
    return address
