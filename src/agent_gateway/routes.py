"""The agent routes and, for each, its admission chain in the order SPEC §5 gives."""

from __future__ import annotations

from agent_gateway.limits.budget import Budgets
from agent_gateway.limits.rate import RateLimiter
from agent_gateway.policies import Policy
from agent_gateway.policies.body import BodyPolicy
from agent_gateway.policies.budget import BudgetPolicy
from agent_gateway.policies.jwt import JWTPolicy
from agent_gateway.policies.models import ModelAllowListPolicy
from agent_gateway.policies.profile import ProfilePolicy
from agent_gateway.policies.rate_limit import RateLimitPolicy
from agent_gateway.policies.secret import SecretPolicy
from agent_gateway.relay import AgentRoute
from agent_gateway.settings import Settings
from agent_gateway.stores.profile_cache import ProfileCache

AGENT_PREFIX = "/api/v1/agents/"


def build_agent_routes(
    settings: Settings, profiles: ProfileCache, limiter: RateLimiter, budgets: Budgets
) -> dict[str, AgentRoute]:
    """Routes by the path after `/api/v1/agents/{user_id}/messages`."""
    secret = SecretPolicy(settings.agent_secrets, settings.agent_tokens_only)
    llm_chain: list[Policy] = [
        secret,  # 1. user id well-formed, agent secret or the user's derived token
        BodyPolicy(settings.max_body_bytes, settings.default_reserve_tokens),  # 2. body
        ProfilePolicy(profiles),  # 3. profile, cached
        ModelAllowListPolicy(),  # 4. allowed models
        RateLimitPolicy(limiter, settings.rate_limit_agent),  # 5. request rate
        BudgetPolicy(budgets, settings.rate_limit_agent_tokens),  # 6. token rate and month: reserve
    ]
    chat = AgentRoute("chat", "POST", "/chat/completions", llm_chain)
    return {
        "": chat,
        "/chat/completions": chat,
        "/responses": AgentRoute("responses", "POST", "/responses", llm_chain),
        "/embeddings": AgentRoute("embeddings", "POST", "/embeddings", llm_chain),
        "/models": AgentRoute("models", "GET", "/models", [secret, ProfilePolicy(profiles)]),
    }


def build_llm_routes(
    settings: Settings, jwt: JWTPolicy, profiles: ProfileCache, limiter: RateLimiter, budgets: Budgets
) -> dict[str, AgentRoute]:
    """The frontend's `/api/v1/llm/…`: the same chain from step 2, the user taken from the token."""
    llm_chain: list[Policy] = [
        jwt,  # a signed-in user's Supabase token; `sub` is the user
        BodyPolicy(settings.max_body_bytes, settings.default_reserve_tokens),
        ProfilePolicy(profiles),
        ModelAllowListPolicy(),
        RateLimitPolicy(limiter, settings.rate_limit_agent),
        BudgetPolicy(budgets, settings.rate_limit_agent_tokens),
    ]
    return {
        "/chat/completions": AgentRoute("chat", "POST", "/chat/completions", llm_chain),
        "/responses": AgentRoute("responses", "POST", "/responses", llm_chain),
        "/embeddings": AgentRoute("embeddings", "POST", "/embeddings", llm_chain),
        # Served through the per-user cache, which checks the token first (frontend.py).
        "/models": AgentRoute("models", "GET", "/models", [ProfilePolicy(profiles)]),
    }


def match_agent_path(path: str) -> tuple[str, str] | None:
    """(user_id, suffix) for `/api/v1/agents/{user_id}/messages{suffix}`, else None."""
    user_id, _, rest = path[len(AGENT_PREFIX) :].partition("/")
    if not rest.startswith("messages"):
        return None
    suffix = rest[len("messages") :].rstrip("/")
    return user_id, suffix
