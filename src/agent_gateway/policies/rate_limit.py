from __future__ import annotations

import math

from agent_gateway.domain import Rate
from agent_gateway.errors import RateLimited
from agent_gateway.limits.rate import RateLimiter
from agent_gateway.llm.context import RequestContext
from agent_gateway.ops import metrics
from agent_gateway.policies import Policy


class RateLimitPolicy(Policy):
    """At most `rate` requests per user in any rolling window (429 with `Retry-After` and the
    IETF `RateLimit` headers, which admitted answers carry too)."""

    summary = "the request rate (429)"

    def __init__(self, limiter: RateLimiter, rate: Rate, scope: str = "agent") -> None:
        self.limiter = limiter
        self.rate = rate
        self.scope = scope
        self._policy = (b"ratelimit-policy", f'"{scope}";q={rate.limit};w={rate.window}'.encode())
        self._prefix = f"{scope}:"

    async def check(self, ctx: RequestContext) -> None:
        decision = await self.limiter.hit(self._prefix + ctx.user_id, self.rate)
        if not decision.allowed:
            metrics.LIMIT_REJECTIONS.labels(limit="requests").inc()
            raise RateLimited(retry_after=decision.retry_after, headers=decision.headers(self.rate, self.scope))
        state = f'"{self.scope}";r={decision.remaining};t={math.ceil(decision.reset)}'.encode()
        ctx.response_headers += (self._policy, (b"ratelimit", state))
