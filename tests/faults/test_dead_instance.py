"""A gateway killed while it holds budget reservations on Redis: another frees them within a few
heartbeats, instead of the user waiting for them to expire (minutes)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, add_profile, new_user, run

pytestmark = pytest.mark.faults  # real processes killed and servers stopped: `-m "not faults"` skips them


def test_the_reservations_of_a_killed_instance_are_freed_by_another(gateway_factory: Any, redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "INSTANCE_HEARTBEAT_SECONDS": "0.3", "LLM_TIMEOUT": "600"}
    doomed = gateway_factory(**env)
    survivor = gateway_factory(**env, DATABASE_URL=doomed.database_url)
    user_id = new_user()
    run(add_profile(doomed.database_url, user_id, monthly_limit=5000))
    body = {"model": "hang", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000}

    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000}

    async def hold_two_reservations() -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            calls = [
                asyncio.create_task(
                    http.post(
                        f"{doomed.agent_base(user_id)}/chat/completions",
                        headers={"Authorization": f"Bearer {SECRET}"},
                        json=body,
                    )
                )
                for _ in range(2)
            ]
            await asyncio.sleep(1.0)  # both admitted, waiting on the upstream that never answers
            # Two reservations of ~2,000 hold 4,000 of 5,000: another 2,000 does not fit.
            before = await http.post(
                f"{survivor.agent_base(user_id)}/chat/completions",
                headers={"Authorization": f"Bearer {SECRET}"},
                json=chat,
            )
            assert doomed.process is not None
            doomed.process.send_signal(signal.SIGKILL)
            await asyncio.gather(*calls, return_exceptions=True)
            return before.status_code

    assert run(hold_two_reservations()) == 429
    killed = time.monotonic()
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = httpx.post(
            f"{survivor.agent_base(user_id)}/chat/completions", headers={"Authorization": f"Bearer {SECRET}"}, json=chat
        )
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    # Freed within a few heartbeats (three silent ones make an instance dead), not at expiry.
    assert statuses[-1] == 200 and time.monotonic() - killed < 5
    assert "freed reservations of a dead instance" in survivor.logs()
