"""Redis hung (SIGSTOP) while calls reserve budget. Their scripts time out on the client but wait in
Redis and run when it resumes; the take-back each call sends races them. Before the take-back was
retried, a reservation for a call long gone held the user's month for its whole lifetime
(~11 minutes): a fault-injection find, reproduced here with its numbers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.conftest import SECRET, add_profile, free_port, new_user, run

pytestmark = pytest.mark.faults  # real processes killed and servers stopped: `-m "not faults"` skips them


def test_reservations_made_while_redis_hung_are_taken_back_when_it_answers(gateway_factory: Any) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        gw = gateway_factory(REDIS_URL=url, LIMITS_FAIL_MODE="closed", REDIS_TIMEOUT="0.05")
        user_id = new_user()
        run(add_profile(gw.database_url, user_id, monthly_limit=1100))
        call = orjson.dumps({"model": "tokens-100", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]})
        endpoint = f"{gw.agent_base(user_id)}/chat/completions"
        headers = {"Authorization": f"Bearer {SECRET}"}

        async def burst(count: int) -> Counter[int]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=count)) as client:
                answers = await asyncio.gather(
                    *(client.post(endpoint, headers=headers, content=call) for _ in range(count))
                )
            return Counter(answer.status_code for answer in answers)

        assert run(burst(1)) == Counter({200: 1})  # 100 used: about two reservations of ~520 fit now
        server.send_signal(signal.SIGSTOP)
        try:
            hung = run(burst(150))
        finally:
            server.send_signal(signal.SIGCONT)  # the queued scripts now reserve for calls long gone
        assert hung[200] == 0 and hung[503] > 0  # closed mode: nothing admitted unchecked

        deadline = time.monotonic() + 10
        after = Counter[int]()
        while time.monotonic() < deadline:
            after = run(burst(1))
            if after[200]:
                break
            time.sleep(0.5)
        assert after == Counter({200: 1})  # the month is free again within seconds
    finally:
        server.kill()
        server.wait()


def test_a_redis_restart_keeps_the_reservations_of_calls_in_flight(gateway_factory: Any) -> None:
    """Redis restarted (empty) while a call is in flight: the month reloaded from the ledger holds
    that call's reservation too, not only settled tokens (before: 180 of 100 tokens passed)."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        return server

    server = start()
    try:
        gw = gateway_factory(REDIS_URL=url, LIMITS_FAIL_MODE="closed")
        user_id = new_user()
        run(add_profile(gw.database_url, user_id, monthly_limit=800))
        endpoint = f"{gw.agent_base(user_id)}/chat/completions"
        headers = {"Authorization": f"Bearer {SECRET}"}

        def body(model: str) -> bytes:  # reserves a bit over 500: one fits in 800, two do not
            return orjson.dumps({"model": model, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]})

        async def scenario() -> tuple[int, int]:
            async with httpx.AsyncClient(timeout=30) as client:
                slow = asyncio.create_task(client.post(endpoint, headers=headers, content=body("letta-slow-3")))
                await asyncio.sleep(1.0)  # admitted: its reservation is in Redis, its row in the ledger
                server.kill()
                server.wait()
                restarted.append(start())  # empty: Redis lost the month and every reservation
                second = await client.post(endpoint, headers=headers, content=body("tokens-100"))
                return second.status_code, (await slow).status_code

        restarted: list[subprocess.Popen[bytes]] = []
        try:
            second, first = run(scenario())
        finally:
            for again in restarted:
                again.kill()
                again.wait()
        assert (second, first) == (429, 200)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
