"""The admission chain: small policies run in order; any one stops a request by raising.

A policy's `check` reads and enriches the `RequestContext`, or raises a `GatewayError` to
refuse. A policy that holds something for the call (a budget reservation, a concurrency slot,
a breaker's probe) gives it back in `release`, which the chain runs for every policy that
passed, whatever happens next: a later policy's refusal, an open breaker, an upstream
failure, an exception, or the call's end (with `ctx.usage`, what it cost). Kong's access and
log phases, as a list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import ClassVar

from agent_gateway.llm.context import RequestContext

log = logging.getLogger("agent_gateway.policies")


class Policy:
    summary: ClassVar[str] = ""  # what it checks, in a few words, for the route docs

    async def check(self, ctx: RequestContext) -> None:
        raise NotImplementedError

    async def release(self, ctx: RequestContext) -> None:
        """Give back what `check` took for the call; `ctx.usage` is what it cost (None: nothing)."""


class Chain:
    """Policies in their order; `async with chain.admit(ctx):` checks them and releases what passed."""

    __slots__ = ("holding", "policies")

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = tuple(policies)
        # Only policies that hold something are released: the hot path awaits no empty release.
        self.holding = frozenset(p for p in self.policies if type(p).release is not Policy.release)

    def admit(self, ctx: RequestContext) -> Admission:
        return Admission(self, ctx)

    def __add__(self, more: Sequence[Policy]) -> Chain:
        return Chain([*self.policies, *more])


class Admission:
    __slots__ = ("chain", "ctx", "passed")

    def __init__(self, chain: Chain, ctx: RequestContext) -> None:
        self.chain = chain
        self.ctx = ctx
        self.passed: list[Policy] = []

    async def __aenter__(self) -> None:
        holding = self.chain.holding
        try:
            for policy in self.chain.policies:
                await policy.check(self.ctx)
                if policy in holding:
                    self.passed.append(policy)
        except BaseException:
            await self._release()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._release()

    async def _release(self) -> None:
        passed, self.passed = self.passed, []
        for policy in reversed(passed):
            try:
                await policy.release(self.ctx)
            except Exception:  # one release failing must not keep the others from giving back
                log.exception("policy release failed", extra={"policy": type(policy).__name__})
