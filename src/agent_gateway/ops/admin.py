"""The admin API, `/api/v1/admin/…` (bearer ADMIN_API_KEY; off without it): users and usage.

The routes only translate: JSON in, ops/users.py's rules (the CLI's too), JSON out in the
shapes of ops/schemas.py. A change applies at once on every instance with Redis, else within
1 s (stores/profile_changes.py).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from agent_gateway import __version__
from agent_gateway.domain import USER_ID_PATTERN, canonical_user_id, this_month
from agent_gateway.errors import BadRequest, InvalidField, InvalidSecret, NotFound
from agent_gateway.ops.admin_page import AdminSessions, client_address
from agent_gateway.ops.schemas import (
    PAGE_LIMIT,
    USAGE_EXAMPLES,
    Breaker,
    DailyUsage,
    DayUsage,
    ModelUsage,
    NewUser,
    Status,
    Usage,
    User,
    UserChanges,
    UserPage,
)
from agent_gateway.ops.users import KEEP, Users
from agent_gateway.settings import Settings
from agent_gateway.stores.ledger import Ledger
from agent_gateway.upstream.breaker import Breakers
from agent_gateway.upstream.litellm_admin import Price, PriceList

PREFIX = "/api/v1/admin"
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")  # fullmatch: no trailing newline, ASCII digits only
_BEARER = HTTPBearer(
    scheme_name="adminKey", description="ADMIN_API_KEY; unset, the admin API answers 404.", auto_error=False
)
_USER_ID = Annotated[str, Path(description="The user id (a UUID in any spelling is one user).")]


def build_admin_router(
    admin_key: SecretStr | None,
    ledger: Ledger,
    users: Users,
    prices: PriceList | None,
    status: Callable[[], Status],
    sessions: AdminSessions | None = None,
) -> APIRouter:
    def require_admin(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        if admin_key is None:
            raise NotFound("The admin API is off (ADMIN_API_KEY is not set).")
        if credentials is None and sessions is not None and sessions.allows(request):
            return  # the admin page, signed in
        given = credentials.credentials if credentials is not None else ""
        if sessions is not None:  # guesses counted per address, with the page's logins
            matches = sessions.key_matches(given, client_address(request))
        else:
            matches = hmac.compare_digest(given.encode(), admin_key.get_secret_value().encode())
        if not matches:
            raise InvalidSecret("Missing or invalid admin key.")

    router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/users", summary="Users, a page at a time", response_model=UserPage)
    async def list_users(
        limit: Annotated[int, Query(description="Users per page.", json_schema_extra=PAGE_LIMIT)] = 50,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the page before.")] = None,
    ) -> UserPage:
        page = await users.page(limit, cursor)
        return UserPage(data=[User.of(user) for user in page.users], total=page.total, next_cursor=page.next_cursor)

    @router.post(
        "/users",
        summary="Create a user (with LITELLM_MASTER_KEY: and their LiteLLM key)",
        status_code=201,
        response_model=User,
        responses={
            201: {"headers": {"Location": {"description": "The new user's URL.", "schema": {"type": "string"}}}}
        },
    )
    async def create_user(body: NewUser, response: Response) -> User:
        changed = await users.create(
            body.id, litellm_key=body.litellm_key, allowed_models=body.allowed_models, monthly_limit=body.monthly_limit
        )
        assert changed.user is not None
        response.headers["Location"] = f"{PREFIX}/users/{changed.user.id}"
        return User.of(changed.user)

    @router.get("/users/{user_id}", summary="One user", response_model=User)
    async def get_user(user_id: _USER_ID) -> User:
        return User.of(await users.get(user_id))

    @router.patch(
        "/users/{user_id}",
        summary="Change a user's allowed models, monthly limit or key (a merge patch)",
        response_model=User,
    )
    async def update_user(user_id: _USER_ID, body: UserChanges) -> User:
        given = body.model_fields_set
        if "litellm_key" in given and body.litellm_key is None:
            raise InvalidField("litellm_key", "cannot be null: a user always has a key")
        changed = await users.update(
            user_id,
            litellm_key=body.litellm_key if body.litellm_key is not None else KEEP,
            allowed_models=body.allowed_models if "allowed_models" in given else KEEP,
            monthly_limit=body.monthly_limit if "monthly_limit" in given else KEEP,
        )
        assert changed.user is not None
        return User.of(changed.user)

    @router.delete(
        "/users/{user_id}",
        summary="Remove a user (ledger rows stay; with LITELLM_MASTER_KEY their LiteLLM key is deleted)",
        status_code=204,
        response_class=Response,
    )
    async def delete_user(user_id: _USER_ID) -> Response:
        await users.remove(user_id)
        return Response(status_code=204)

    @router.post(
        "/users/{user_id}/rotate-key",
        summary="Give a user a new LiteLLM key and delete the old one (needs LITELLM_MASTER_KEY)",
        response_model=User,
    )
    async def rotate_key(user_id: _USER_ID) -> User:
        changed = await users.rotate_key(user_id)
        assert changed.user is not None
        return User.of(changed.user)

    @router.get(
        "/usage",
        summary="Token usage per user and month, per model and priced where LiteLLM knows the price",
        response_model=Usage | list[Usage],
        responses={200: {"content": {"application/json": {"examples": USAGE_EXAMPLES}}}},
    )
    async def admin_usage(
        user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
        month: Annotated[str | None, Query(description="YYYY-MM, UTC; default this month")] = None,
    ) -> Any:
        month, user_id = _month(month), _user(user_id)
        totals = await ledger.month_totals(month, user_id)
        by_model = await ledger.model_totals(month, user_id)
        known = await prices.get() if prices is not None else {}
        answers = [_usage(row, [m for m in by_model if m["user_id"] == row["user_id"]], known) for row in totals]
        if user_id is None:
            return answers
        return answers[0] if answers else _usage(_empty_usage(user_id, month), [], known)

    @router.get("/usage/daily", summary="Token usage per day and model in a month (what /admin charts)")
    async def daily_usage(
        user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
        month: Annotated[str | None, Query(description="YYYY-MM, UTC; default this month")] = None,
    ) -> DailyUsage:
        month, user_id = _month(month), _user(user_id)
        days = await ledger.daily_totals(month, user_id)
        return DailyUsage(month=month, user_id=user_id, days=[DayUsage(**day) for day in days])

    @router.get("/status", summary="This instance: requests in flight, circuit breakers, limits in force")
    async def instance_status() -> Status:
        return status()

    return router


def instance_status(settings: Settings, breakers: Breakers, in_flight: Callable[[], int]) -> Callable[[], Status]:
    """What `/status` reports: read when asked, from this instance's own state."""
    limits = {
        "rate_limit_agent": settings.rate_limit_agent.text,
        "rate_limit_agent_tokens": settings.rate_limit_agent_tokens.text if settings.rate_limit_agent_tokens else None,
        "max_concurrent_per_user": settings.max_concurrent_per_user,
        "redis": settings.redis_url is not None,
    }

    def status() -> Status:
        return Status(
            version=__version__,
            in_flight=in_flight(),
            max_in_flight=settings.max_concurrent_requests,
            breakers=[Breaker(name=name, state=state) for name, state in breakers.states().items()],
            limits=limits,
        )

    return status


def _user(user_id: str | None) -> str | None:
    """The ledger keys a UUID user by its canonical spelling, whatever the caller wrote."""
    return canonical_user_id(user_id) if user_id is not None else None


def _month(month: str | None) -> str:
    month = month or this_month()
    if not _MONTH.fullmatch(month):
        raise BadRequest("`month` must be YYYY-MM.", param="month")
    return month


def _usage(totals: dict[str, Any], models: list[dict[str, Any]], prices: dict[str, Price]) -> Usage:
    priced = [
        ModelUsage(
            model=row["model"],
            requests=row["requests"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            total_tokens=row["total_tokens"],
            estimated_cost=_cost(row, prices.get(row["model"] or "")),
        )
        for row in models
    ]
    costs = [model.estimated_cost for model in priced if model.estimated_cost is not None]
    return Usage(**totals, models=priced, estimated_cost=round(sum(costs), 8) if costs else None)


def _cost(row: dict[str, Any], price: Price | None) -> float | None:
    """USD for a model's month: cached prompt tokens at the cache-read price where LiteLLM has one."""
    if price is None:
        return None
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    cached = min(int(row["cached_tokens"]), prompt)
    cached_price = price.cached_prompt if price.cached_prompt is not None else price.prompt
    cost = (prompt - cached) * price.prompt + cached * cached_price + completion * price.completion
    return round(cost, 8)


def _empty_usage(user_id: str, month: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "month": month,
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "estimated_requests": 0,
    }
