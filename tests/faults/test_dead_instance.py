"""A gateway killed while it holds budget reservations: another frees them within a few heartbeats,
instead of the user waiting for them to expire (minutes). And an instance that starts beside a
live one leaves the live one's reservations alone (before: it settled them at its start, and two
instances on PostgreSQL with Redis down admitted 1,980 tokens where 1,222 fitted)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import SECRET, add_profile, free_port, new_user, run

pytestmark = pytest.mark.faults  # real processes killed and servers stopped: `-m "not faults"` skips them

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000}
HANG = {**CHAT, "model": "hang"}  # the fake LiteLLM never answers it
T = TypeVar("T")


async def hold_two_reservations_then_die(
    gateway: Any, user_id: str, meanwhile: Callable[[httpx.AsyncClient], Awaitable[T]]
) -> T:
    """Two calls admitted on `gateway` (reserving ~2,000 each, held by an upstream that never
    answers), then what `meanwhile` does, then the gateway SIGKILLed; what `meanwhile` returned."""
    async with httpx.AsyncClient(timeout=30) as http:
        endpoint = f"{gateway.agent_base(user_id)}/chat/completions"
        headers = {"Authorization": f"Bearer {SECRET}"}
        calls = [asyncio.create_task(http.post(endpoint, headers=headers, json=HANG)) for _ in range(2)]
        await asyncio.sleep(1.0)  # both admitted, waiting on the upstream
        result = await meanwhile(http)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*calls, return_exceptions=True)
        return result


@pytest.fixture(params=["redis", "database"])
def shared_by(request: pytest.FixtureRequest) -> tuple[dict[str, str], str]:
    """What the two instances share their budgets through: Redis, or (Redis down, `open` mode) the
    PostgreSQL ledger, where the heartbeats are too; and what the survivor logs when it frees."""
    if request.param == "redis":
        return {"REDIS_URL": request.getfixturevalue("redis_url")}, "freed reservations of a dead instance"
    database: str = request.getfixturevalue("postgres_url")
    down = f"redis://127.0.0.1:{free_port()}/0"
    env = {"DATABASE_URL": database, "REDIS_URL": down, "LIMITS_FAIL_MODE": "open"}
    return env, "settled calls left in flight by a crashed process"


def test_the_reservations_of_a_killed_instance_are_freed_by_another(
    gateway_factory: Any, shared_by: tuple[dict[str, str], str]
) -> None:
    shared, freed = shared_by
    env = {**shared, "INSTANCE_HEARTBEAT_SECONDS": "0.3", "LLM_TIMEOUT": "600"}
    doomed = gateway_factory(**env)
    user_id = new_user()
    run(add_profile(doomed.database_url, user_id, monthly_limit=5000))
    headers = {"Authorization": f"Bearer {SECRET}"}

    async def beside_the_live_instance(http: httpx.AsyncClient) -> int:
        # Started now, beside the live instance: it must not take the live calls for crashed ones.
        survivor.append(gateway_factory(**{**env, "DATABASE_URL": doomed.database_url}))
        # Two reservations of ~2,000 hold 4,000 of 5,000: another 2,000 does not fit.
        before = await http.post(f"{survivor[0].agent_base(user_id)}/chat/completions", headers=headers, json=CHAT)
        return before.status_code

    survivor: list[Any] = []
    assert run(hold_two_reservations_then_die(doomed, user_id, beside_the_live_instance)) == 429
    killed = time.monotonic()
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = httpx.post(f"{survivor[0].agent_base(user_id)}/chat/completions", headers=headers, json=CHAT)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    # Freed within a few heartbeats (three silent ones make an instance dead), not at expiry.
    assert statuses[-1] == 200 and time.monotonic() - killed < 5
    assert freed in survivor[0].logs()


def test_an_instance_taken_for_dead_bills_its_calls_once(gateway_factory: Any, redis_url: str) -> None:
    """An instance that stalls (here SIGSTOP) longer than three heartbeats is taken for dead: another
    frees its reservations and bills their estimates. When it wakes and its calls end, their real
    usage replaces those estimates instead of being added to them."""
    env = {"REDIS_URL": redis_url, "INSTANCE_HEARTBEAT_SECONDS": "0.3"}
    stalled = gateway_factory(**env)
    survivor = gateway_factory(**{**env, "DATABASE_URL": stalled.database_url})
    user_id = new_user()
    run(add_profile(stalled.database_url, user_id, monthly_limit=10_000))
    headers = {"Authorization": f"Bearer {SECRET}"}
    slow = {**CHAT, "model": "letta-slow-3", "max_tokens": 500}
    assert stalled.process is not None

    async def stall_during_a_call() -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            call = asyncio.create_task(
                http.post(f"{stalled.agent_base(user_id)}/chat/completions", headers=headers, json=slow)
            )
            await asyncio.sleep(0.5)  # admitted, waiting for the upstream's answer
            stalled.process.send_signal(signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 10
                while "freed reservations of a dead instance" not in survivor.logs():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            finally:
                stalled.process.send_signal(signal.SIGCONT)
            return (await call).status_code

    assert run(stall_during_a_call()) == 200
    time.sleep(0.5)  # the settlement is written within one flush interval
    with sqlite3.connect(stalled.database_url.removeprefix("sqlite:///")) as db:
        billed, estimated = db.execute(
            "SELECT sum(total_tokens), max(estimated) FROM usage_ledger WHERE user_id = ?", (user_id,)
        ).fetchone()
    assert (billed, estimated) == (18, 0)  # the real usage, not the estimate recovery wrote
    too_big = {**CHAT, "max_tokens": 20_000}
    refused = httpx.post(f"{survivor.agent_base(user_id)}/chat/completions", headers=headers, json=too_big)
    assert refused.status_code == 429
    assert f"{10_000 - billed} are left this month" in refused.json()["error"]["message"]


def test_a_gateway_restarted_after_a_crash_frees_what_it_held_at_once(gateway_factory: Any, redis_url: str) -> None:
    """Restarted on the same machine, the gateway knows its predecessor is dead (its pid runs no
    more): it settles its calls and frees its Redis reservations as it starts, not three
    heartbeats (here 30 s) later."""
    crashed = gateway_factory(REDIS_URL=redis_url, LLM_TIMEOUT="600")
    user_id = new_user()
    run(add_profile(crashed.database_url, user_id, monthly_limit=5000))
    headers = {"Authorization": f"Bearer {SECRET}"}

    async def nothing(_http: httpx.AsyncClient) -> None:
        return None

    run(hold_two_reservations_then_die(crashed, user_id, nothing))
    assert crashed.process is not None and crashed.process.wait(10) == -signal.SIGKILL
    restarted = gateway_factory(REDIS_URL=redis_url, DATABASE_URL=crashed.database_url)
    answer = httpx.post(f"{restarted.agent_base(user_id)}/chat/completions", headers=headers, json=CHAT)
    assert answer.status_code == 200  # 4,000 held by the dead calls would leave no room for 2,000
    assert "freed reservations of a dead instance" in restarted.logs()
    with sqlite3.connect(crashed.database_url.removeprefix("sqlite:///")) as db:
        states = db.execute(
            "SELECT state, estimated FROM usage_ledger WHERE user_id = ? AND model = 'hang'", (user_id,)
        )
        assert states.fetchall() == [("settled", 1), ("settled", 1)]
