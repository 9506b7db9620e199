from __future__ import annotations

from agent_gateway.errors import ServiceUnavailable, UserNotFound
from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Policy
from agent_gateway.stores.key_cipher import KeyUnreadable
from agent_gateway.stores.profile_cache import ProfileCache


class ProfilePolicy(Policy):
    """Loads the user's profile through the cache; no profile or no key is 403 `user_not_found`."""

    summary = "the user's profile (403 `user_not_found`)"

    def __init__(self, profiles: ProfileCache) -> None:
        self.profiles = profiles

    async def check(self, ctx: RequestContext) -> None:
        try:
            profile = await self.profiles.get(ctx.user_id)
        except KeyUnreadable:  # a misconfigured KEY_ENCRYPTION_KEY: no retry will help, so a 500
            raise
        except Exception as exc:  # the store or PostgREST is down: nothing to decide with
            raise ServiceUnavailable("User profiles cannot be read right now.") from exc
        if profile is None or not profile.litellm_key:
            raise UserNotFound()
        ctx.profile = profile
