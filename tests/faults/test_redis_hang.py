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
