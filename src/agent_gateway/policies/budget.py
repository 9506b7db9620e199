from __future__ import annotations

import math
from datetime import datetime

from agent_gateway.domain import Rate, seconds_to_next_month
from agent_gateway.errors import BudgetExceeded, GatewayError, RateLimited, ServiceUnavailable
from agent_gateway.limits.budget import OVER_MONTH, OVER_REQUESTS, BudgetDecision, BudgetRequest, Budgets
from agent_gateway.llm.context import RequestContext
from agent_gateway.ops import metrics
from agent_gateway.policies import Policy


class BudgetPolicy(Policy):
    """Counts the request against `RATE_LIMIT_AGENT` (429 `rate_limit_exceeded`, with the IETF
    `RateLimit` headers that admitted answers carry too), then reserves the call's worst case
    (`ctx.reserve_tokens`) against the user's `monthly_limit` (429 `insufficient_quota`) and the
    token rate (429 `rate_limit_exceeded`): one atomic step, one Redis round trip. Its release
    replaces the reservation with what the call cost."""

    summary = "the request rate, token rate and monthly limit, reserved (429)"

    def __init__(self, budgets: Budgets, requests: Rate | None, token_rate: Rate | None, scope: str = "agent") -> None:
        self.budgets = budgets
        self.requests = requests
        self.token_rate = token_rate
        self.scope = scope
        self._policy = (
            (b"ratelimit-policy", f'"{scope}";q={requests.limit};w={requests.window}'.encode()) if requests else None
        )

    async def check(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None
        monthly_limit = ctx.profile.monthly_limit
        if monthly_limit is None and self.token_rate is None and self.requests is None:
            return
        request = BudgetRequest(
            ctx.user_id,
            ctx.month,
            ctx.call_id,
            ctx.reserve_tokens,
            monthly_limit,
            self.token_rate,
            ctx.prompt_estimate,
            self.requests,
        )
        try:
            decision = await self.budgets.reserve(request)
        except GatewayError:
            raise
        except Exception as exc:  # the ledger cannot be read: never admit unchecked
            raise ServiceUnavailable("Usage limits cannot be checked right now.") from exc
        if not decision.admitted:
            raise self._refusal(decision, request, ctx)
        if monthly_limit is not None or self.token_rate is not None:
            ctx.reservation = request  # tokens held until the call ends; a request count needs no settling
        if self._policy is not None:
            state = f'"{self.scope}";r={decision.remaining};t={math.ceil(decision.reset)}'.encode()
            ctx.response_headers += (self._policy, (b"ratelimit", state))

    def _refusal(self, decision: BudgetDecision, request: BudgetRequest, ctx: RequestContext) -> GatewayError:
        if decision.outcome == OVER_REQUESTS:
            assert self.requests is not None
            metrics.LIMIT_REJECTIONS.labels(limit="requests").inc()
            headers = _headers(self.scope, self.requests.limit, self.requests.window, 0, decision.reset)
            return RateLimited(retry_after=decision.retry_after, headers=headers)
        if decision.outcome == OVER_MONTH:
            assert request.monthly_limit is not None
            return month_exceeded(
                request.monthly_limit, decision.used + decision.reserved, request.tokens, ctx.admitted_at
            )
        assert self.token_rate is not None
        metrics.LIMIT_REJECTIONS.labels(limit="tokens").inc()
        remaining = max(0, self.token_rate.limit - decision.used)
        headers = _headers("tokens", self.token_rate.limit, self.token_rate.period, remaining, decision.retry_after)
        return RateLimited("Token rate limit exceeded.", retry_after=decision.retry_after, headers=headers)

    async def release(self, ctx: RequestContext) -> None:
        if ctx.reservation is not None:
            await self.budgets.settle(ctx.reservation, ctx.usage.total_tokens if ctx.usage is not None else 0)


def month_exceeded(limit: int, held: int, wanted: int, now: datetime) -> BudgetExceeded:
    """The 429 for a call that may use `wanted` tokens when the month already holds `held` of `limit`."""
    metrics.LIMIT_REJECTIONS.labels(limit="monthly").inc()
    remaining = max(0, limit - held)
    reset = seconds_to_next_month(now)
    return BudgetExceeded(
        f"Monthly token limit reached: this call may use up to {wanted} tokens and {remaining} are left this month.",
        retry_after=reset,
        headers=_headers("monthly", limit, reset, remaining, reset),
    )


def _headers(name: str, quota: int, window: float, remaining: int, reset: float) -> dict[str, str]:
    return {
        "RateLimit-Policy": f'"{name}";q={quota};w={math.ceil(window)}',
        "RateLimit": f'"{name}";r={remaining};t={max(0, math.ceil(reset))}',
    }
