from __future__ import annotations

import math
from datetime import UTC, datetime

from agent_gateway import metrics
from agent_gateway.context import RequestContext
from agent_gateway.errors import BudgetExceeded, GatewayError, RateLimited, ServiceUnavailable
from agent_gateway.limits.budget import OVER_MONTH, BudgetRequest, Budgets
from agent_gateway.settings import Rate
from agent_gateway.stores.ledger import Usage


class BudgetPolicy:
    """Reserves the call's worst case (`ctx.reserve_tokens`) against the user's `monthly_limit`
    (429 `insufficient_quota`) and the token rate (429 `rate_limit_exceeded`), atomically; the
    settle hook it registers replaces the reservation with the real usage."""

    def __init__(self, budgets: Budgets, token_rate: Rate | None) -> None:
        self.budgets = budgets
        self.token_rate = token_rate

    async def check(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None
        monthly_limit = ctx.profile.monthly_limit
        if monthly_limit is None and self.token_rate is None:
            return
        request = BudgetRequest(ctx.user_id, ctx.month, ctx.call_id, ctx.reserve_tokens, monthly_limit, self.token_rate)
        try:
            decision = await self.budgets.reserve(request)
        except GatewayError:
            raise
        except Exception as exc:  # the ledger cannot be read: never admit unchecked
            raise ServiceUnavailable("Usage limits cannot be checked right now.") from exc
        if not decision.admitted:
            if decision.outcome == OVER_MONTH:
                assert monthly_limit is not None
                metrics.LIMIT_REJECTIONS.labels(limit="monthly").inc()
                remaining = max(0, monthly_limit - decision.used - decision.reserved)
                reset = seconds_to_next_month(ctx.admitted_at)
                headers = _headers("monthly", monthly_limit, reset, remaining, reset)
                raise BudgetExceeded(
                    f"Monthly token limit reached: this call may use up to {ctx.reserve_tokens} tokens "
                    f"and {remaining} are left this month.",
                    retry_after=reset,
                    headers=headers,
                )
            assert self.token_rate is not None
            metrics.LIMIT_REJECTIONS.labels(limit="tokens").inc()
            remaining = max(0, self.token_rate.limit - decision.used)
            headers = _headers("tokens", self.token_rate.limit, self.token_rate.period, remaining, decision.retry_after)
            raise RateLimited("Token rate limit exceeded.", retry_after=decision.retry_after, headers=headers)

        async def settle(usage: Usage) -> None:
            await self.budgets.settle(request, usage.total_tokens)

        ctx.settle_hooks.append(settle)


def seconds_to_next_month(now: datetime) -> float:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return (datetime(year, month, 1, tzinfo=UTC) - now).total_seconds()


def _headers(name: str, quota: int, window: float, remaining: int, reset: float) -> dict[str, str]:
    return {
        "RateLimit-Policy": f'"{name}";q={quota};w={math.ceil(window)}',
        "RateLimit": f'"{name}";r={remaining};t={max(0, math.ceil(reset))}',
    }
