"""Exact limits (SPEC §5 steps 5-6): request rate, token rate and monthly limits, under
concurrency, across gateway processes sharing one Redis, and with Redis gone."""

from __future__ import annotations

import asyncio
import random
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from agent_gateway.domain import Usage
from agent_gateway.stores.database import Database
from agent_gateway.stores.ledger import Ledger, LedgerEntry
from tests.conftest import SECRET, GatewayProcess, add_profile, free_port, new_user, run, start_redis, wait_for_rows
from tests.fakes.litellm import FakeLiteLLM

HIGH_RATE = "100000/minute"


def chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def burst(gateways: list[GatewayProcess], user_id: str, count: int, body: dict[str, Any]) -> Counter[int]:
    """`count` requests at once, spread over `gateways`; the statuses they got."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(index: int) -> int:
            gateway = gateways[index % len(gateways)]
            response = await client.post(
                f"{gateway.agent_base(user_id)}/chat/completions",
                headers={"Authorization": f"Bearer {SECRET}"},
                json=body,
            )
            return response.status_code

        return Counter(await asyncio.gather(*(one(i) for i in range(count))))


@pytest.fixture
def redis_limits_url(redis_url: str) -> str:
    """The test Redis with fresh keys: every key the gateway writes names a user, and users are new."""
    return redis_url


def test_two_processes_on_one_redis_admit_exactly_the_request_limit(
    gateway_factory: Any, litellm: FakeLiteLLM, redis_limits_url: str
) -> None:
    # A generous Redis timeout: this test is about the shared limit, not the fallback when a
    # saturated host answers late (tested below with Redis really gone).
    env = {"REDIS_URL": redis_limits_url, "RATE_LIMIT_AGENT": "50/minute", "REDIS_TIMEOUT": "5"}
    first = gateway_factory(**env)
    second = gateway_factory(**env, DATABASE_URL=first.database_url)  # a second instance, same store
    user_id = new_user()
    run(add_profile(first.database_url, user_id))

    statuses = run(burst([first, second], user_id, 200, chat()))

    assert statuses == Counter({200: 50, 429: 150})
    assert len(litellm.for_user(user_id)) == 50


def test_monthly_limit_refuses_with_insufficient_quota_and_the_next_month(
    gateway: GatewayProcess, litellm: FakeLiteLLM
) -> None:
    user_id = new_user()
    run(add_profile(gateway.database_url, user_id, monthly_limit=2500))
    client = gateway.client(user_id)
    for _ in range(2):  # each reserves ~1000, settles at 1000
        client.chat.completions.create(**chat("tokens-1000", max_tokens=990))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**chat("tokens-1000", max_tokens=990))

    response = caught.value.response
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert response.headers["x-should-retry"] == "false"
    now = datetime.now(UTC)
    first_of_next = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    assert abs(int(response.headers["retry-after"]) - (first_of_next - now).total_seconds()) < 5
    # One structured-field list per header: the policy that refused, and the request rate.
    assert f'"monthly";q=2500;w={response.headers["retry-after"]}' in response.headers["ratelimit-policy"]
    assert f'"monthly";r=500;t={response.headers["retry-after"]}' in response.headers["ratelimit"]
    assert len(litellm.for_user(user_id)) == 2
    # A call that fits in what is left still goes through.
    assert client.chat.completions.create(**chat("tokens-400", max_tokens=300)).usage


@pytest.mark.parametrize("shared", ["in-process", "redis, two processes"])
def test_concurrent_calls_never_overshoot_the_monthly_limit(
    gateway_factory: Any, litellm: FakeLiteLLM, redis_limits_url: str, shared: str
) -> None:
    env = {"RATE_LIMIT_AGENT": HIGH_RATE}
    if shared.startswith("redis"):
        env.update(REDIS_URL=redis_limits_url, REDIS_TIMEOUT="5")
    first = gateway_factory(**env)
    gateways = [first]
    if shared.startswith("redis"):
        gateways.append(gateway_factory(**env, DATABASE_URL=first.database_url))
    user_id = new_user()
    run(add_profile(first.database_url, user_id, monthly_limit=10_000))

    statuses = run(burst(gateways, user_id, 100, chat("tokens-1000", max_tokens=1000)))

    admitted = statuses[200]
    assert 1 <= admitted <= 10 and statuses[429] == 100 - admitted
    rows = run(wait_for_rows(first.database_url, user_id, admitted))
    assert len(rows) == admitted == len(litellm.for_user(user_id))
    assert sum(row["total_tokens"] for row in rows) == 1000 * admitted <= 10_000


def test_token_rate_limit_reserves_then_settles(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    gw = gateway_factory(RATE_LIMIT_AGENT_TOKENS="3000/minute", RATE_LIMIT_AGENT=HIGH_RATE)
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    client = gw.client(user_id)
    # Each reserves ~1000 but settles at 100: the window holds what was really used.
    for _ in range(5):
        client.chat.completions.create(**chat("tokens-100", max_tokens=1000))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**chat("tokens-100", max_tokens=3000))
    response = caught.value.response
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert '"tokens";q=3000;w=60' in response.headers["ratelimit-policy"]
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert len(litellm.for_user(user_id)) == 5


def test_month_totals_come_from_the_ledger_when_redis_has_none(
    gateway_factory: Any, litellm: FakeLiteLLM, redis_limits_url: str
) -> None:
    gw = gateway_factory(REDIS_URL=redis_limits_url, RATE_LIMIT_AGENT=HIGH_RATE)
    user_id = new_user()
    run(add_profile(gw.database_url, user_id, monthly_limit=5000))
    run(_spent(gw.database_url, user_id, 4500))  # e.g. before a restart that emptied Redis

    with pytest.raises(openai.RateLimitError):
        gw.client(user_id).chat.completions.create(**chat("tokens-1000", max_tokens=1000))
    assert litellm.for_user(user_id) == []
    assert gw.client(user_id).chat.completions.create(**chat("tokens-100", max_tokens=200)).usage


async def _spent(database_url: str, user_id: str, tokens: int) -> None:
    database = Database(database_url)
    await database.start()
    ledger = Ledger(database)
    entry = LedgerEntry(user_id, "chat", "gpt-4o-mini", None)
    ledger.admit(entry)
    ledger.settle(entry, 200, Usage(tokens // 2, tokens - tokens // 2, 0, tokens))
    await ledger.close()
    await database.close()


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own, so the test can stop it."""
    port = free_port()
    process = start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    yield url, process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_redis_stopped_mid_run_open_mode_keeps_serving_with_checked_limits(
    gateway_factory: Any, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = own_redis
    gw = gateway_factory(REDIS_URL=url, RATE_LIMIT_AGENT="5/minute", LIMITS_FAIL_MODE="open")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id, monthly_limit=2200))
    client = gw.client(user_id)
    client.chat.completions.create(**chat("tokens-1000", max_tokens=1000))
    server.kill()
    server.wait()

    # Served on the in-process fallback; the monthly limit is still checked, against the ledger.
    run(wait_for_rows(gw.database_url, user_id, 1))
    assert client.chat.completions.create(**chat("tokens-1000", max_tokens=1000)).usage
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**chat("tokens-1000", max_tokens=1000))
    assert caught.value.response.json()["error"]["code"] == "insufficient_quota"
    statuses = [
        httpx.post(
            f"{gw.agent_base(user_id)}/chat/completions",
            headers={"Authorization": f"Bearer {SECRET}"},
            json=chat("tokens-10", max_tokens=10),
        ).status_code
        for _ in range(6)
    ]
    assert 429 in statuses and statuses[0] == 200  # the request rate is enforced by the fallback
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'gateway_redis_fallbacks_total{component="budget",mode="open"}' in metrics
    assert "redis unavailable" in gw.logs()
    assert httpx.get(f"{gw.url}/health").json()["checks"]["redis"]["status"] == "error"


def test_redis_stopped_in_closed_mode_refuses_with_503(
    gateway_factory: Any, own_redis: tuple[str, subprocess.Popen[bytes]], litellm: FakeLiteLLM
) -> None:
    url, server = own_redis
    gw = gateway_factory(REDIS_URL=url, LIMITS_FAIL_MODE="closed")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    assert gw.client(user_id).chat.completions.create(**chat()).usage
    server.kill()
    server.wait()
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client(user_id).chat.completions.create(**chat())
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "limits_unavailable"
    assert len(litellm.for_user(user_id)) == 1


def test_300_streams_with_30_percent_of_clients_leaving_leave_300_exact_rows(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(RATE_LIMIT_AGENT=HIGH_RATE, MAX_CONCURRENT_PER_USER="400")  # draining streams count too
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    rng = random.Random(7)
    leaving = set(rng.sample(range(300), 90))

    async def one(client: httpx.AsyncClient, index: int) -> None:
        body = chat("slow-stream", stream=True, stream_options={"include_usage": True})
        headers = {"Authorization": f"Bearer {SECRET}", "X-Request-ID": f"s-{index}-{uuid.uuid4().hex[:6]}"}
        async with client.stream("POST", f"{gw.agent_base(user_id)}/chat/completions", headers=headers, json=body) as r:
            stop_after = rng.randint(1, 15) if index in leaving else None
            seen = 0
            async for _ in r.aiter_bytes():
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    return  # the client leaves mid-stream

    async def all_streams() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            gate = asyncio.Semaphore(100)

            async def gated(index: int) -> None:
                async with gate:
                    await one(client, index)

            await asyncio.gather(*(gated(i) for i in range(300)))

    run(all_streams())
    rows = run(wait_for_rows(gw.database_url, user_id, 300, timeout=60))

    assert len(rows) == 300 and all(row["state"] == "settled" for row in rows)
    exact = [row for row in rows if not row["estimated"]]
    assert all((row["prompt_tokens"], row["completion_tokens"]) == (11, 20) for row in exact)
    assert len(exact) >= 290  # the drain reads the usage of nearly every abandoned stream
