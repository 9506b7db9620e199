"""The agent ids AMS lists in a user's `/me`: which Letta agents are theirs with LETTA_OWNERSHIP=ams."""

from __future__ import annotations

import orjson

from agent_gateway.errors import UpstreamError
from agent_gateway.frontend.passthrough import ServiceCall, ServiceProxy
from agent_gateway.stores.response_cache import ResponseCache

CACHE_SECONDS = 10.0


class AmsAgents:
    def __init__(self, ams: ServiceProxy, cache: ResponseCache) -> None:
        self.ams = ams
        self.cache = cache

    async def __call__(self, user_id: str, token: str | None) -> set[str]:
        cached = await self.cache.get(user_id, "ams-agents")
        if cached is not None:
            return set(orjson.loads(cached[1]))
        call = ServiceCall("GET", ["me"], "", {"Authorization": f"Bearer {token}", "X-User-ID": user_id})
        response = await self.ams.open(call, user=user_id)
        me = await response.json()
        if response.status != 200 or not isinstance(me, dict):  # not cached: a hiccup must not lock users out
            raise UpstreamError("AMS could not say which agents are yours.")
        agents = me.get("agents") or me.get("agent_ids") or []
        ids = {str(a.get("id")) if isinstance(a, dict) else str(a) for a in agents if a}
        await self.cache.put(user_id, "ams-agents", (b"application/json", orjson.dumps(sorted(ids))), CACHE_SECONDS)
        return ids
