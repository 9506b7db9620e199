"""The LLM routes and their admission chain, in the order SPEC §5 gives, built once for both doors:
the agents' `/api/v1/agents/{user_id}/messages/…` (agent secret) and the web app's
`/api/v1/llm/…` (a signed-in user's Supabase token)."""

from __future__ import annotations

from dataclasses import dataclass

from agent_gateway.asgi import BodyDeadline
from agent_gateway.limits.budget import Budgets
from agent_gateway.limits.concurrency import InFlight
from agent_gateway.llm.relay import LLMRoute
from agent_gateway.policies import Chain, Policy
from agent_gateway.policies.body import BodyPolicy
from agent_gateway.policies.breaker import CircuitPolicy
from agent_gateway.policies.budget import BudgetPolicy
from agent_gateway.policies.concurrency import ConcurrencyPolicy
from agent_gateway.policies.models import ModelAllowListPolicy
from agent_gateway.policies.profile import ProfilePolicy
from agent_gateway.settings import Settings
from agent_gateway.stores.profile_cache import ProfileCache
from agent_gateway.upstream.breaker import Breakers

AGENT_PREFIX = "/api/v1/agents/"
LLM_PREFIX = "/api/v1/llm"


@dataclass(frozen=True, slots=True)
class LimitState:
    """What the policies check against, shared by every route and instance-wide."""

    profiles: ProfileCache
    budgets: Budgets
    in_flight: InFlight
    breakers: Breakers


def build_llm_routes(settings: Settings, state: LimitState, identity: Policy) -> dict[str, LLMRoute]:
    """Routes by the path after their prefix; `identity` says who calls (and so who pays)."""
    profile = ProfilePolicy(state.profiles)
    admission = Chain(
        [
            identity,  # 1. the agent secret or the user's derived token; or a signed-in user's token
            ConcurrencyPolicy(state.in_flight),  # the user's requests in flight, slow bodies included
            BodyPolicy(
                settings.max_body_bytes,
                settings.default_reserve_tokens,
                BodyDeadline(settings.body_timeout, settings.min_body_rate),
            ),  # 2. body
            profile,  # 3. profile, cached
            ModelAllowListPolicy(),  # 4. allowed models
            # 5-6. request rate, then token rate and month reserved: one step, one Redis round trip
            BudgetPolicy(state.budgets, settings.rate_limit_agent, settings.rate_limit_agent_tokens),
            CircuitPolicy(state.breakers, "litellm"),  # the model's breaker
        ]
    )
    chat = LLMRoute("chat", "POST", "/chat/completions", admission)
    return {
        "/chat/completions": chat,
        "/responses": LLMRoute("responses", "POST", "/responses", admission),
        "/embeddings": LLMRoute("embeddings", "POST", "/embeddings", admission),
        "/models": LLMRoute("models", "GET", "/models", Chain([identity, profile])),
    }


def build_agent_routes(settings: Settings, state: LimitState, identity: Policy) -> dict[str, LLMRoute]:
    """The agents' routes: the LLM routes, and the base path itself as the documented form of chat."""
    routes = build_llm_routes(settings, state, identity)
    return {"": routes["/chat/completions"], **routes}


def match_agent_path(path: str) -> tuple[str, str] | None:
    """(user_id, suffix) for `/api/v1/agents/{user_id}/messages{suffix}`, else None."""
    user_id, _, rest = path[len(AGENT_PREFIX) :].partition("/")
    if not rest.startswith("messages"):
        return None
    return user_id, rest[len("messages") :].rstrip("/")
