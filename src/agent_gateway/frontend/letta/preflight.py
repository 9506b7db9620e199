"""Before an agent turn reaches Letta, the checks the agent route would make of its LLM calls.

Letta turns a refused LLM call into its own generic 500. Checked here first, the user gets
the gateway's own §8 answer instead: 403 `user_not_found`, 403 `model_not_allowed` (the
agent's model) or 429 `insufficient_quota`, when the month cannot hold one more of the agent's
calls at its worst (its `max_tokens`, else DEFAULT_RESERVE_TOKENS, as the agent route would
reserve). The turn's prompt is Letta's to build, so a call can still be refused mid-turn.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent_gateway.domain import month_of
from agent_gateway.errors import ModelNotAllowed, ServiceUnavailable, UserNotFound
from agent_gateway.frontend.letta.ownership import Agent
from agent_gateway.limits.budget import Budgets
from agent_gateway.policies.budget import month_exceeded
from agent_gateway.stores.profile_cache import ProfileCache


class TurnPreflight:
    def __init__(self, profiles: ProfileCache, budgets: Budgets, default_reserve_tokens: int) -> None:
        self.profiles = profiles
        self.budgets = budgets
        self.default_reserve_tokens = default_reserve_tokens

    async def __call__(self, user_id: str, agent: Agent) -> None:
        try:
            profile = await self.profiles.get(user_id)
        except Exception as exc:  # the store or PostgREST is down: nothing to decide with
            raise ServiceUnavailable("User profiles cannot be read right now.") from exc
        if profile is None or not profile.litellm_key:
            raise UserNotFound()
        if agent.model is not None and not profile.allows(agent.model):
            raise ModelNotAllowed(f"This agent's model {agent.model!r} is not allowed for this user.", param="model")
        if profile.monthly_limit is None:
            return
        now = datetime.now(UTC)
        held = await self.budgets.month_held(user_id, month_of(now))
        wanted = agent.max_tokens or self.default_reserve_tokens
        if held + wanted > profile.monthly_limit:
            raise month_exceeded(profile.monthly_limit, held, wanted, now)
