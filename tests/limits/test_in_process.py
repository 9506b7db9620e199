"""The limits on their own, in process and on the real Redis (no gateway): exact at any interleaving."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from agent_gateway.domain import Rate
from agent_gateway.limits.budget import (
    ADMITTED,
    OVER_MONTH,
    OVER_RATE,
    OVER_REQUESTS,
    BudgetRequest,
    Budgets,
    MemoryBudgets,
    RedisBudgets,
)
from agent_gateway.limits.concurrency import InFlight
from agent_gateway.limits.rate import MemoryRateLimiter, RedisRateLimiter
from agent_gateway.limits.redis import PAUSE_AFTER, PAUSE_SECONDS
from tests.conftest import free_port, start_redis

MONTH = "2026-12"


async def used(_user: str, _month: str) -> int:
    return 400  # what the ledger says is settled this month


def request(
    rid: str,
    tokens: int,
    limit: int | None = 1000,
    rate: Rate | None = None,
    user: str = "u",
    requests: Rate | None = None,
) -> BudgetRequest:
    return BudgetRequest(user, MONTH, rid, tokens, limit, rate, requests=requests)


async def test_sliding_log_admits_exactly_the_limit_in_any_window() -> None:
    limiter = MemoryRateLimiter()
    rate = Rate.parse("3/second")
    decisions = [limiter.hit_now("u", rate) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[2].remaining == 0 and 0 < decisions[3].retry_after <= 1
    assert limiter.hit_now("other", rate).allowed  # per key
    await asyncio.sleep(1.05)
    assert limiter.hit_now("u", rate).allowed


async def test_month_reservations_hold_the_worst_case_until_settled() -> None:
    budgets = MemoryBudgets(used)
    assert (await budgets.reserve(request("a", 500))).outcome == ADMITTED  # 400 + 500 <= 1000
    refused = await budgets.reserve(request("b", 200))  # 400 + 500 held + 200 > 1000
    assert (refused.outcome, refused.used, refused.reserved) == (OVER_MONTH, 400, 500)
    await budgets.settle(request("a", 500), 50)  # it cost 50: 450 used, nothing held
    assert await budgets.month_held("u", MONTH) == 450
    assert (await budgets.reserve(request("c", 550))).outcome == ADMITTED


async def test_a_burst_is_admitted_exactly_up_to_the_month() -> None:
    budgets = MemoryBudgets(used)
    decisions = await asyncio.gather(*(budgets.reserve(request(str(i), 100)) for i in range(20)))
    assert sum(d.admitted for d in decisions) == 6  # (1000 - 400) // 100


async def test_token_rate_refuses_past_the_window_and_says_when() -> None:
    budgets = MemoryBudgets(used)
    rate = Rate.parse("1000/minute")
    assert (await budgets.reserve(request("a", 700, None, rate))).admitted
    over = await budgets.reserve(request("b", 400, None, rate))
    assert over.outcome == OVER_RATE and 0 < over.retry_after <= 60


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_budgets_are_exact_under_a_concurrent_burst(redis_client: redis.asyncio.Redis) -> None:
    budgets = RedisBudgets(redis_client, used, ttl=60, fail_mode="closed", prefix=f"t:{uuid.uuid4().hex}:")
    decisions = await asyncio.gather(*(budgets.reserve(request(str(i), 100)) for i in range(50)))
    assert sum(d.admitted for d in decisions) == 6
    first = next(i for i, decision in enumerate(decisions) if decision.admitted)  # any 6 may win the race
    await budgets.settle(request(str(first), 100), 10)
    assert await budgets.month_held("u", MONTH) == 400 + 5 * 100 + 10


@pytest.fixture(params=["memory", "redis"])
def budgets(request: pytest.FixtureRequest, redis_client: redis.asyncio.Redis) -> Budgets:
    if request.param == "memory":
        return MemoryBudgets(used)
    return RedisBudgets(redis_client, used, ttl=60, fail_mode="closed", prefix=f"t:{uuid.uuid4().hex}:")


async def test_the_request_rate_is_exact_and_counted_before_the_month(budgets: Budgets) -> None:
    """The request rate comes first (SPEC §5 step 5): a request the month refuses still counts."""
    per_minute = Rate.parse("4/minute")
    decisions = await asyncio.gather(*(budgets.reserve(request(str(i), 100, requests=per_minute)) for i in range(3)))
    assert [d.outcome for d in decisions] == [ADMITTED] * 3
    assert sorted(d.remaining for d in decisions) == [1, 2, 3] and all(0 < d.reset <= 60 for d in decisions)
    too_big = await budgets.reserve(request("big", 5000, requests=per_minute))  # over the month
    assert too_big.outcome == OVER_MONTH
    refused = await budgets.reserve(request("late", 1, requests=per_minute))  # 4 requests this minute
    assert refused.outcome == OVER_REQUESTS and 59 < refused.retry_after <= 60
    assert await budgets.month_held("u", MONTH) == 400 + 3 * 100  # the refused reserved nothing
    other = await budgets.reserve(request("x", 1, user="v", requests=per_minute))
    assert other.admitted and other.remaining == 3  # per user


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A redis-server of this test's own, so its command count is this test's alone."""
    port = free_port()
    server = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


async def test_one_admission_is_one_redis_round_trip(private_redis: str) -> None:
    client = redis.asyncio.Redis.from_url(private_redis)
    budgets = RedisBudgets(client, used, ttl=60, fail_mode="closed", prefix="t:")
    tokens, requests = Rate.parse("1000/minute"), Rate.parse("10/minute")
    await budgets.reserve(request("warm", 10, rate=tokens, requests=requests))  # loads the month once
    watcher = redis.asyncio.Redis.from_url(private_redis)
    sent: list[str] = []  # what clients sent, as Redis' MONITOR saw it (not the scripts' own calls)
    async with watcher.monitor() as monitor:
        decision = await budgets.reserve(request("a", 10, rate=tokens, requests=requests))
        await client.echo("done")
        async for command in monitor.listen():
            if command["client_type"] != "lua":
                sent.append(command["command"].split()[0])
            if command["command"].startswith("ECHO"):
                break
    assert decision.admitted and decision.remaining == 8
    assert sent == ["EVALSHA", "ECHO"]
    await watcher.aclose()
    await client.aclose()


async def test_redis_rate_limit_is_exact_under_a_concurrent_burst(redis_client: redis.asyncio.Redis) -> None:
    limiter = RedisRateLimiter(redis_client, "closed", prefix=f"t:{uuid.uuid4().hex}:")
    decisions = await asyncio.gather(*(limiter.hit("u", Rate.parse("7/minute")) for _ in range(30)))
    assert sum(d.allowed for d in decisions) == 7


async def test_a_redis_restart_fails_no_call() -> None:
    """Redis restarted (empty): every pooled connection died with it. Closed mode refused one call
    per dead connection with 503; now the first failure drops them all and the call is retried."""
    port = free_port()
    server = start_redis(port)
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    limiter = RedisRateLimiter(client, "closed", prefix="t:")
    budgets = RedisBudgets(client, used, ttl=60, fail_mode="closed", prefix="t:")
    per_minute = Rate.parse("100/minute")
    try:
        # Eight calls at once: eight pooled connections.
        await asyncio.gather(*(limiter.hit("u", per_minute) for _ in range(8)))
        server.kill()
        server.wait()
        server = start_redis(port)
        decisions = await asyncio.gather(*(limiter.hit("u", per_minute) for _ in range(8)))
        assert [d.remaining for d in sorted(decisions, key=lambda d: -d.remaining)] == list(range(99, 91, -1))
        assert (await budgets.reserve(request("after", 100))).admitted
    finally:
        await client.aclose()
        server.kill()
        server.wait()


async def test_a_hung_redis_is_left_alone_between_tries() -> None:
    """While Redis hangs, only a try a second waits REDIS_TIMEOUT; the other calls go to the
    fallback at once (in `open` mode; `closed` refuses at once), and Redis is used again once it answers."""
    port = free_port()
    server = start_redis(port)
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.05)
    limiter = RedisRateLimiter(client, "open", prefix="t:")
    per_minute = Rate.parse("1000/minute")
    try:
        assert (await limiter.hit("u", per_minute)).remaining == 999
        server.send_signal(signal.SIGSTOP)
        for _ in range(PAUSE_AFTER):  # each waits the timeout, then falls back
            assert (await limiter.hit("u", per_minute)).allowed
        started = time.monotonic()
        fallbacks = [await limiter.hit("u", per_minute) for _ in range(20)]
        assert time.monotonic() - started < 20 * 0.05 / 2  # not one timeout each
        # This process's own log, which took the calls that timed out too.
        assert [d.remaining for d in fallbacks] == list(range(999 - PAUSE_AFTER, 979 - PAUSE_AFTER, -1))
        server.send_signal(signal.SIGCONT)
        await asyncio.sleep(PAUSE_SECONDS)
        # Redis' own log again: the first hit, this one, and the timed-out ones Redis ran when it woke.
        assert 998 - PAUSE_AFTER <= (await limiter.hit("u", per_minute)).remaining <= 998
    finally:
        await client.aclose()
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait()


async def test_a_month_reloaded_from_the_ledger_holds_what_the_ledger_holds(redis_client: redis.asyncio.Redis) -> None:
    """A reload takes the month's reservations from the ledger's calls in flight, not only its total:
    a reservation whose settlement Redis missed (it was away) held budget for ~11 minutes, on
    top of the usage the ledger's total already counted."""
    settled: dict[str, int] = {"total": 400}
    in_flight: list[tuple[str, int]] = []

    async def ledger_total(_user: str, _month: str) -> int:
        return settled["total"]

    async def ledger_in_flight(_user: str, _month: str) -> list[tuple[str, int]]:
        return in_flight

    prefix = f"t:{uuid.uuid4().hex}:"
    budgets = RedisBudgets(
        redis_client, ledger_total, ttl=60, fail_mode="closed", prefix=prefix, in_flight=ledger_in_flight
    )
    assert (await budgets.reserve(request("a", 300, 5000))).admitted
    assert (await budgets.reserve(request("b", 200, 5000))).admitted
    # `a` ends with 250 tokens; the ledger has it, Redis missed the settlement. `b` is in flight.
    settled["total"], in_flight[:] = 650, [("b", 200)]
    await redis_client.delete(f"{prefix}u:{MONTH}:used")  # what an instance back from the outage does
    assert (await budgets.reserve(request("c", 100, 5000))).admitted
    # `a` was admitted within 2 s: its row could be one the ledger has not committed yet. Kept.
    assert await budgets.month_held("u", MONTH) == 650 + 200 + 300 + 100
    await asyncio.sleep(2.1)
    await redis_client.delete(f"{prefix}u:{MONTH}:used")
    settled["total"], in_flight[:] = 650, [("b", 200), ("c", 100)]
    assert (await budgets.reserve(request("d", 10, 5000))).admitted
    assert await budgets.month_held("u", MONTH) == 650 + 200 + 100 + 10  # `a` is gone; `d` is new


async def test_a_reservation_undone_and_made_again_counts_once(redis_client: redis.asyncio.Redis) -> None:
    """What a retry after a lost reply does (the script may have run): undo, then reserve again."""
    budgets = RedisBudgets(redis_client, used, ttl=60, fail_mode="closed", prefix=f"t:{uuid.uuid4().hex}:")
    once = Rate.parse("1/minute")
    assert (await budgets.reserve(request("a", 100, requests=once))).admitted
    await budgets.settle(request("a", 100, requests=once), 0)
    assert (await budgets.reserve(request("a", 100, requests=once))).admitted  # the same call: not counted twice
    assert await budgets.month_held("u", MONTH) == 400 + 100
    assert (await budgets.reserve(request("b", 1, requests=once))).outcome == OVER_REQUESTS


async def test_a_settlement_redis_cannot_take_refuses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Closed mode with Redis down refuses admissions; a call that already ended has nothing to
    refuse: its settlement is noted (the month reloads from the ledger), not raised as a 503."""
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    budgets = RedisBudgets(client, used, ttl=60, fail_mode="closed", prefix="t:")
    for _ in range(3):
        await budgets.settle(request("gone", 100), 10)
    assert [r.message for r in caplog.records] == ["redis unavailable for limits"]  # once, not per call
    await client.aclose()


def test_in_flight_slots_are_per_user_exact_and_given_back() -> None:
    slots = InFlight(3)
    assert [slots.take("u") for _ in range(5)] == [True, True, True, False, False]
    assert slots.take("v")  # per user
    slots.give_back("u")
    assert slots.take("u") and not slots.take("u")
    for _ in range(3):
        slots.give_back("u")
    assert slots.held("u") == 0
