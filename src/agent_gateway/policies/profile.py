from __future__ import annotations

from agent_gateway.context import RequestContext
from agent_gateway.errors import UserNotFound
from agent_gateway.stores.profile_cache import ProfileCache


class ProfilePolicy:
    """Loads the user's profile through the cache; no profile or no key is 403 `user_not_found`."""

    def __init__(self, profiles: ProfileCache) -> None:
        self.profiles = profiles

    async def check(self, ctx: RequestContext) -> None:
        profile = await self.profiles.get(ctx.user_id)
        if profile is None or not profile.litellm_key:
            raise UserNotFound()
        ctx.profile = profile
