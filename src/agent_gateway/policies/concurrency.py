from __future__ import annotations

from agent_gateway.errors import TooManyInFlight
from agent_gateway.limits.concurrency import InFlight
from agent_gateway.llm.context import RequestContext
from agent_gateway.ops import metrics
from agent_gateway.policies import Policy


class ConcurrencyPolicy(Policy):
    """At most `MAX_CONCURRENT_PER_USER` requests of one user in flight in this process (else 429
    `concurrency_limit_exceeded`). Checked before the body is read, so a slow body counts against
    its own user; `release` gives the slot back."""

    summary = "the user's requests in flight (429)"

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight

    async def check(self, ctx: RequestContext) -> None:
        if not self.in_flight.take(ctx.user_id):
            metrics.LIMIT_REJECTIONS.labels(limit="concurrency").inc()
            limit = self.in_flight.limit
            raise TooManyInFlight(f"At most {limit} requests of one user may run at once.", retry_after=1, headers={})
        ctx.in_flight = True

    async def release(self, ctx: RequestContext) -> None:
        if ctx.in_flight:
            ctx.in_flight = False
            self.in_flight.give_back(ctx.user_id)
