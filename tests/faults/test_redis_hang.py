"""Redis losing what it held for the month (a restart) while calls are in flight: fault-injection finds."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import SECRET, add_profile, free_port, new_user, run, start_redis

pytestmark = pytest.mark.faults  # real processes killed and servers stopped: `-m "not faults"` skips them


def test_a_redis_restart_keeps_the_reservations_of_calls_in_flight(gateway_factory: Any) -> None:
    """Redis restarted (empty) while a call is in flight: the month reloaded from the ledger holds
        that call's reservation too, not only settled tokens (before: 180 of 100 tokens passed). And no
    call fails on a connection that died with the old server (before: a 503 per pooled connection)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    server = start_redis(port)
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
                restarted.append(start_redis(port))  # empty: Redis lost the month and every reservation
                # Every pooled connection died with the server: the call is made on a new one, no 503.
                second = (await client.post(endpoint, headers=headers, content=body("tokens-100"))).status_code
                return second, (await slow).status_code

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
