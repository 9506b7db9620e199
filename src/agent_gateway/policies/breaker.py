from __future__ import annotations

from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Policy
from agent_gateway.upstream.breaker import Breakers


class CircuitPolicy(Policy):
    """The model's circuit breaker is not open (else 503 `circuit_open` with `Retry-After`); while
    it is half-open the call may be its one probe, which `release` frees if it got no verdict."""

    summary = "the model's circuit breaker (503)"

    def __init__(self, breakers: Breakers, service: str) -> None:
        self.breakers = breakers
        self.service = service

    async def check(self, ctx: RequestContext) -> None:
        ctx.breaker = self.breakers.get(f"{self.service}:{ctx.model_label}")
        ctx.probe = ctx.breaker.before_call()

    async def release(self, ctx: RequestContext) -> None:
        if ctx.probe and ctx.breaker is not None:
            ctx.breaker.release_probe()  # a probe that ended with no verdict (the client left) lets the next try
