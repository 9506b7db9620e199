"""Streams when things go wrong: clients leaving, upstreams breaking or hanging, shutdowns."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import SECRET, GatewayProcess, add_profile, free_port, new_user, run, wait_for_rows
from tests.fakes.litellm import FakeLiteLLM

MESSAGES: Any = [{"role": "user", "content": "hello there"}]


def _stream(gateway: GatewayProcess, user_id: str, model: str, **extra: Any) -> httpx.Response:
    client = httpx.Client(timeout=30)
    request = client.build_request(
        "POST",
        f"{gateway.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": model, "messages": MESSAGES, "stream": True, **extra},
    )
    return client.send(request, stream=True)


def test_client_leaving_mid_stream_still_bills_the_real_usage(gateway: GatewayProcess, user: str) -> None:
    response = _stream(gateway, user, "slow-stream")
    first = next(response.iter_bytes())
    assert b"Hel" in first
    response.close()  # the client goes away after the first chunk; 19 more are still to come

    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert row["state"] == "settled"
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 20, False)


def test_upstream_breaking_mid_stream_ends_with_an_sse_error_and_an_estimate(
    gateway: GatewayProcess, user: str
) -> None:
    response = _stream(gateway, user, "drop")
    body = response.read()
    assert response.status_code == 200
    events = [line for line in body.split(b"\n\n") if line]
    final = json.loads(events[-1].removeprefix(b"data: "))
    assert final["error"]["type"] == "upstream_error"
    assert b"Hel" in body

    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert row["estimated"] and row["total_tokens"] > 0


def test_the_sdk_sees_a_broken_stream_as_an_error(gateway: GatewayProcess, user: str) -> None:
    stream = gateway.client(user).chat.completions.create(model="drop", messages=MESSAGES, stream=True)
    try:
        for _ in stream:
            pass
    except openai.APIError as exc:
        assert "upstream" in str(exc).lower()
    else:
        raise AssertionError("a broken stream must not look like a finished one")


def test_a_200_that_is_not_json_is_a_502_billed_as_an_estimate(gateway: GatewayProcess, user: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client(user).chat.completions.create(model="garbage", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_invalid"

    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert row["state"] == "settled" and row["estimated"] and row["total_tokens"] > 0


def test_a_garbled_stream_ends_with_an_sse_error_and_an_estimate(gateway: GatewayProcess, user: str) -> None:
    response = _stream(gateway, user, "garbage")
    body = response.read()
    assert response.status_code == 200 and b'"Hi"' in body  # the good chunk came through first
    final = json.loads(body.rstrip(b"\n").split(b"\n\n")[-1].removeprefix(b"data: "))
    assert final["error"]["code"] == "upstream_invalid"
    with pytest.raises(openai.APIError):  # the SDK does not take it for a finished answer
        list(gateway.client(user).chat.completions.create(model="garbage", messages=MESSAGES, stream=True))

    rows = run(wait_for_rows(gateway.database_url, user, 2))
    assert len(rows) == 2 and all(row["estimated"] and row["total_tokens"] > 0 for row in rows)


def test_hanging_upstream_is_a_504_billed_as_an_estimate(gateway_factory: Any) -> None:
    gw = gateway_factory(LLM_TIMEOUT="0.5", REQUEST_TIMEOUT="0.5")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    for stream in (False, True):
        with httpx.Client(timeout=10) as client:
            response = client.post(
                f"{gw.agent_base(user_id)}/chat/completions",
                headers={"Authorization": f"Bearer {SECRET}"},
                json={"model": "hang", "messages": MESSAGES, "stream": stream},
            )
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "upstream_timeout"
    rows = run(wait_for_rows(gw.database_url, user_id, 2))
    assert [(row["status"], row["estimated"]) for row in rows] == [(504, True), (504, True)]


def test_unreachable_upstream_is_a_502_and_bills_nothing(gateway_factory: Any) -> None:
    gw = gateway_factory(LITELLM_BASE_URL=f"http://127.0.0.1:{free_port()}")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client(user_id).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["type"] == "upstream_error"
    row = run(wait_for_rows(gw.database_url, user_id, 1))[0]
    assert (row["status"], row["total_tokens"]) == (502, 0)
    health = httpx.get(f"{gw.url}/health")
    assert health.status_code == 503 and health.json()["checks"]["litellm"]["status"] == "error"


def test_sigterm_lets_running_streams_finish_and_loses_no_row(gateway_factory: Any) -> None:
    gw = gateway_factory(SHUTDOWN_GRACE_SECONDS="10")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    response = _stream(gw, user_id, "slow-stream", stream_options={"include_usage": True})
    chunks = response.iter_bytes()
    assert b"Hel" in next(chunks)
    exit_code: list[int] = []
    stopper = threading.Thread(target=lambda: exit_code.append(gw.terminate()))
    stopper.start()
    rest = b"".join(chunks)
    stopper.join(30)

    assert rest.rstrip().endswith(b"data: [DONE]")  # the stream ran to its end
    assert exit_code == [0]
    row = run(wait_for_rows(gw.database_url, user_id, 1))[0]
    assert (row["state"], row["completion_tokens"], row["estimated"]) == ("settled", 20, False)


def test_streams_past_the_grace_end_with_an_error_event_and_are_settled(
    gateway_factory: Any, litellm: FakeLiteLLM
) -> None:
    litellm.reset()
    gw = gateway_factory(SHUTDOWN_GRACE_SECONDS="1")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    response = _stream(gw, user_id, "stall")
    chunks = response.iter_bytes()
    assert b"Hel" in next(chunks)
    started = time.monotonic()
    stopper = threading.Thread(target=gw.terminate)
    stopper.start()
    rest = b"".join(chunks)
    stopper.join(30)
    litellm.release()

    assert time.monotonic() - started < 10
    assert b'"service_unavailable"' in rest
    row = run(wait_for_rows(gw.database_url, user_id, 1))[0]
    assert (row["state"], row["estimated"]) == ("settled", True)


def test_a_failing_model_opens_its_own_breaker_only(gateway_factory: Any) -> None:
    gw = gateway_factory(LLM_TIMEOUT="0.5", BREAKER_THRESHOLD="2", BREAKER_COOLDOWN_SECONDS="60")
    user_id, other = new_user(), new_user()
    named = frozenset({"hang", "gpt-4o-mini"})  # breakers per model for models an allow-list names
    run(add_profile(gw.database_url, user_id, allowed_models=named))
    run(add_profile(gw.database_url, other, allowed_models=named))
    client = gw.client(user_id)
    # One user's timeouts alone never open a breaker for everybody: it takes two users' failures.
    for failing in (client, client, gw.client(other)):
        with pytest.raises(openai.APIStatusError) as timed_out:
            failing.chat.completions.create(model="hang", messages=MESSAGES)
        assert timed_out.value.status_code == 504
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="hang", messages=MESSAGES)
    assert refused.value.status_code == 503 and time.monotonic() - started < 1.0
    assert refused.value.response.json()["error"]["code"] == "circuit_open"
    assert int(refused.value.response.headers["retry-after"]) > 0
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage  # other models go on
    rows = run(wait_for_rows(gw.database_url, user_id, 3))
    assert len(rows) == 3  # the refused call was never admitted: no row, no reservation
    health = httpx.get(f"{gw.url}/health").json()
    assert health["checks"]["litellm"]["breakers"]["hang"] == "open"


def test_requests_over_the_in_flight_cap_get_503_overloaded(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    litellm.reset()
    gw = gateway_factory(MAX_CONCURRENT_REQUESTS="1")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    response = _stream(gw, user_id, "stall")
    chunks = response.iter_bytes()
    assert b"Hel" in next(chunks)  # one stream in flight fills the cap
    overloaded = httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
    )
    assert overloaded.status_code == 503
    assert overloaded.json()["error"]["code"] == "overloaded" and overloaded.headers["retry-after"] == "1"
    assert httpx.get(f"{gw.url}/ping").status_code == 200  # probes are never refused
    litellm.release()
    b"".join(chunks)


def test_one_users_timeouts_never_open_a_breaker_for_the_others(gateway_factory: Any) -> None:
    gw = gateway_factory(LLM_TIMEOUT="0.5", BREAKER_THRESHOLD="2", BREAKER_COOLDOWN_SECONDS="60")
    slow, other = new_user(), new_user()
    for user_id in (slow, other):
        run(add_profile(gw.database_url, user_id, allowed_models=frozenset({"hang"})))
    for _ in range(4):
        with pytest.raises(openai.APIStatusError) as timed_out:
            gw.client(slow).chat.completions.create(model="hang", messages=MESSAGES)
        assert timed_out.value.status_code == 504  # every one tried, none refused by a breaker
    assert httpx.get(f"{gw.url}/health").json()["checks"]["litellm"]["breakers"]["hang"] == "closed"
