"""The admission chain, in process: every policy that passed is released, whatever happens next."""

from __future__ import annotations

import pytest

from agent_gateway.domain import Profile, Rate, Usage
from agent_gateway.errors import BudgetExceeded, CircuitOpen, ModelNotAllowed, RateLimited, TooManyInFlight
from agent_gateway.limits.budget import MemoryBudgets
from agent_gateway.limits.concurrency import InFlight
from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Chain, Policy
from agent_gateway.policies.breaker import CircuitPolicy
from agent_gateway.policies.budget import BudgetPolicy
from agent_gateway.policies.concurrency import ConcurrencyPolicy
from agent_gateway.policies.models import ModelAllowListPolicy
from agent_gateway.upstream.breaker import Breakers


async def _nothing() -> dict[str, object]:
    return {"type": "http.disconnect"}


def context(user: str = "alice", model: str = "gpt-4o", limit: int | None = None, reserve: int = 100) -> RequestContext:
    ctx = RequestContext("req", "chat", user, [], _nothing)
    ctx.profile = Profile(user, "sk-key", frozenset({"gpt-4o"}), limit)
    ctx.model = ctx.model_label = model
    ctx.reserve_tokens = reserve
    return ctx


class Holding(Policy):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def check(self, ctx: RequestContext) -> None:
        self.log.append(f"check {self.name}")

    async def release(self, ctx: RequestContext) -> None:
        self.log.append(f"release {self.name}")


class Refusing(Policy):
    async def check(self, ctx: RequestContext) -> None:
        raise ModelNotAllowed()


async def test_a_later_refusal_releases_what_passed_in_reverse_and_nothing_else() -> None:
    log: list[str] = []
    chain = Chain([Holding(log, "a"), Holding(log, "b"), Refusing(), Holding(log, "c")])
    with pytest.raises(ModelNotAllowed):
        async with chain.admit(context()):
            pass
    assert log == ["check a", "check b", "release b", "release a"]


async def test_a_failure_after_admission_still_releases_everything() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError):
        async with Chain([Holding(log, "a"), Holding(log, "b")]).admit(context()):
            raise RuntimeError("the upstream call blew up")
    assert log[-2:] == ["release b", "release a"]


async def test_policies_holding_nothing_are_not_released() -> None:
    chain = Chain([ModelAllowListPolicy(), Holding([], "a")])
    assert [type(p).__name__ for p in chain.holding] == ["Holding"]


async def test_a_budget_refused_later_gives_back_the_concurrency_slot() -> None:
    budgets = MemoryBudgets(lambda user, month: _zero())
    chain = Chain([ConcurrencyPolicy(InFlight(1)), BudgetPolicy(budgets, None, None)])
    with pytest.raises(BudgetExceeded):
        async with chain.admit(context(limit=10, reserve=100)):
            pass
    async with chain.admit(context(limit=1000, reserve=100)):  # the slot is free again
        pass


async def _zero() -> int:
    return 0


async def test_concurrency_caps_one_user_and_not_the_others() -> None:
    chain = Chain([ConcurrencyPolicy(InFlight(2))])
    first, second = chain.admit(context()), chain.admit(context())
    await first.__aenter__()
    await second.__aenter__()
    with pytest.raises(TooManyInFlight) as refused:
        async with chain.admit(context()):
            pass
    assert refused.value.status_code == 429 and refused.value.code == "concurrency_limit_exceeded"
    async with chain.admit(context(user="bob")):
        pass
    await first.__aexit__(None, None, None)
    async with chain.admit(context()):
        pass
    await second.__aexit__(None, None, None)


async def test_the_budget_is_settled_with_what_the_call_cost() -> None:
    budgets = MemoryBudgets(lambda user, month: _zero())
    chain = Chain([BudgetPolicy(budgets, None, None)])
    ctx = context(limit=1000, reserve=900)
    async with chain.admit(ctx):
        assert await budgets.month_held("alice", ctx.month) == 900  # the worst case, held
        ctx.usage = Usage(10, 20, 0, 30)
    assert await budgets.month_held("alice", ctx.month) == 30  # what it cost


async def test_an_open_breaker_refuses_and_a_probe_without_verdict_is_freed() -> None:
    breakers = Breakers(threshold=1, cool_down=0.0)
    chain = Chain([CircuitPolicy(breakers, "litellm")])
    breakers.get("litellm:gpt-4o").failed(None)  # a failure to connect: open for everyone
    async with chain.admit(context()):  # half-open at once (no cool-down): this call is the probe
        with pytest.raises(CircuitOpen):
            async with chain.admit(context()):  # a second call meanwhile is refused
                pass
    async with chain.admit(context()):  # the probe left with no verdict: the next may probe
        pass


async def test_a_request_rate_alone_counts_the_call_and_holds_nothing_to_settle() -> None:
    budgets = MemoryBudgets(lambda user, month: _zero())
    chain = Chain([BudgetPolicy(budgets, Rate.parse("2/minute"), None)])
    first = context()
    async with chain.admit(first):
        assert first.reservation is None  # no tokens held: nothing to give back (on Redis, no second trip)
        assert (b"ratelimit", b'"agent";r=1;t=60') in first.response_headers
    async with chain.admit(context()):
        pass
    with pytest.raises(RateLimited) as refused:
        async with chain.admit(context()):
            pass
    assert refused.value.headers["RateLimit"].startswith('"agent";r=0;')
