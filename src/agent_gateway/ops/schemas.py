"""The admin API's JSON shapes, as `/openapi.json` publishes them for the clients built on it.

Input is typed here and checked by ops/users.py, whose rules the CLI shares; the constraints
shown in the schema are those rules, documented, not a second copy of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent_gateway.domain import USER_ID_PATTERN, Profile, mask_key
from agent_gateway.ops.users import MAX_PAGE

_INPUT = ConfigDict(extra="forbid", strict=True)
_ALICE = {
    "id": "alice",
    "allowed_models": ["gpt-4o", "gpt-4o-mini"],
    "monthly_limit": 1000000,
    "litellm_key_hint": "sk-…f3Qa",
    "created_at": "2025-06-01T09:30:00Z",
}


def _example(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class User(BaseModel):
    model_config = _example(_ALICE)

    id: str = Field(description="The user id in agent URLs and the Supabase JWT `sub`.")
    allowed_models: list[str] | None = Field(description="Models the user may call, sorted; null: every model.")
    monthly_limit: int | None = Field(description="Tokens per calendar month (UTC); null: no limit.")
    litellm_key_hint: str = Field(description="The user's LiteLLM key, masked; the key itself is never returned.")
    created_at: datetime | None

    @classmethod
    def of(cls, profile: Profile) -> User:
        models = sorted(profile.allowed_models) if profile.allowed_models is not None else None
        return cls(
            id=profile.id,
            allowed_models=models,
            monthly_limit=profile.monthly_limit,
            litellm_key_hint=mask_key(profile.litellm_key),
            created_at=profile.created_at,
        )


class UserPage(BaseModel):
    model_config = _example({"data": [_ALICE], "total": 120, "next_cursor": "YWxpY2U"})

    data: list[User] = Field(description="Users by id.")
    total: int = Field(description="Users in all pages.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class NewUser(BaseModel):
    model_config = ConfigDict(
        **_INPUT,
        json_schema_extra={
            "examples": [
                {"id": "alice", "allowed_models": ["gpt-4o-mini"], "monthly_limit": 1000000},
                {"id": "bob", "litellm_key": "sk-bob-virtual-key"},
            ]
        },
    )

    id: str = Field(json_schema_extra={"pattern": USER_ID_PATTERN})
    litellm_key: str | None = Field(
        default=None,
        description="The user's LiteLLM virtual key. Required without LITELLM_MASTER_KEY; with it, the gateway "
        "makes the key (limited to `allowed_models`) and refuses one given here.",
    )
    allowed_models: list[str] | None = Field(
        default=None,
        description="At least one model; null or left out: every model.",
        json_schema_extra={"minItems": 1},
    )
    monthly_limit: int | None = Field(
        default=None, description="Tokens per calendar month (UTC); null: no limit.", json_schema_extra={"minimum": 0}
    )


class UserChanges(BaseModel):
    """A merge patch: a field left out stays as it is, null clears a limit or an allow-list."""

    model_config = ConfigDict(
        **_INPUT,
        json_schema_extra={"examples": [{"allowed_models": ["gpt-4o"]}, {"monthly_limit": None}]},
    )

    litellm_key: str | None = Field(
        default=None, description="A new LiteLLM key; refused with LITELLM_MASTER_KEY (rotate the key instead)."
    )
    allowed_models: list[str] | None = Field(default=None, description="null: every model.")
    monthly_limit: int | None = Field(default=None, description="null: no limit.", json_schema_extra={"minimum": 0})


_ALICE_USAGE = {
    "user_id": "alice",
    "month": "2025-06",
    "requests": 42,
    "prompt_tokens": 30000,
    "completion_tokens": 12000,
    "total_tokens": 42000,
    "estimated_requests": 1,
    "estimated_cost": 0.0117,
    "models": [
        {
            "model": "gpt-4o-mini",
            "requests": 42,
            "prompt_tokens": 30000,
            "completion_tokens": 12000,
            "total_tokens": 42000,
            "estimated_cost": 0.0117,
        }
    ],
}
_BOB_USAGE = {
    "user_id": "bob",
    "month": "2025-06",
    "requests": 3,
    "prompt_tokens": 900,
    "completion_tokens": 150,
    "total_tokens": 1050,
    "estimated_requests": 0,
    "estimated_cost": None,
    "models": [
        {
            "model": "claude-local",
            "requests": 3,
            "prompt_tokens": 900,
            "completion_tokens": 150,
            "total_tokens": 1050,
            "estimated_cost": None,
        }
    ],
}
# `GET /usage` answers one user's totals with `user_id`, a list of every user's without.
USAGE_EXAMPLES = {
    "one_user": {"summary": "?user_id=alice&month=2025-06", "value": _ALICE_USAGE},
    "every_user": {"summary": "?month=2025-06 (every user with calls that month)", "value": [_ALICE_USAGE, _BOB_USAGE]},
}


class ModelUsage(BaseModel):
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_cost: float | None = Field(
        description="USD at LiteLLM's token prices (`/model/info`); null without LITELLM_MASTER_KEY or a price."
    )


class Usage(BaseModel):
    model_config = _example(_ALICE_USAGE)

    user_id: str
    month: str = Field(description="YYYY-MM, UTC.")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_requests: int = Field(description="Calls whose tokens are an estimate (no usage from upstream).")
    estimated_cost: float | None = Field(description="The sum over the models whose price is known; null if none is.")
    models: list[ModelUsage] = Field(description="The same totals per model.")


PAGE_LIMIT = {"minimum": 1, "maximum": MAX_PAGE}


class DayUsage(BaseModel):
    model_config = _example(
        {"day": "2025-06-03", "model": "gpt-4o-mini", "requests": 42, "total_tokens": 18250, "estimated_requests": 1}
    )

    day: str = Field(description="The UTC day, YYYY-MM-DD.")
    model: str | None = Field(description="The model as the user named it.")
    requests: int
    total_tokens: int
    estimated_requests: int = Field(description="Calls billed by estimate (the upstream reported no usage).")


class DailyUsage(BaseModel):
    model_config = _example(
        {
            "month": "2025-06",
            "user_id": "alice",
            "days": [
                {"day": "2025-06-03", "model": "gpt-4o", "requests": 7, "total_tokens": 5120, "estimated_requests": 0},
                {
                    "day": "2025-06-03",
                    "model": "gpt-4o-mini",
                    "requests": 42,
                    "total_tokens": 18250,
                    "estimated_requests": 1,
                },
            ],
        }
    )

    month: str = Field(description="YYYY-MM, UTC.")
    user_id: str | None = Field(description="The user; null: every user.")
    days: list[DayUsage] = Field(description="By day, then model; days without calls are left out.")


class Breaker(BaseModel):
    name: str = Field(description="The upstream, or `litellm:<model>` for one model's breaker.")
    state: str = Field(description="closed (calls pass), open (refused at once) or half_open (one probe).")


class Status(BaseModel):
    model_config = _example(
        {
            "version": "0.1.0",
            "in_flight": 3,
            "max_in_flight": 1000,
            "breakers": [{"name": "litellm:gpt-4o", "state": "closed"}],
            "limits": {
                "rate_limit_agent": "100/minute",
                "rate_limit_agent_tokens": None,
                "max_concurrent_per_user": 100,
                "redis": True,
            },
        }
    )

    version: str
    in_flight: int = Field(description="Requests this instance is serving now.")
    max_in_flight: int = Field(description="MAX_CONCURRENT_REQUESTS: past it, 503 overloaded.")
    breakers: list[Breaker] = Field(description="This instance's circuit breakers that have seen calls.")
    limits: dict[str, Any] = Field(description="The limits in force for every user, and whether Redis shares them.")
