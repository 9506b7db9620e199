"""Letta as the agents' LLM client: every model and embedding call of a user's agent reaches the
gateway on that user's own route, with the agent secret, and is metered to that user."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conformance.conftest import Platform
from tests.fakes.litellm import LETTA_ANSWER, USAGE

pytestmark = [pytest.mark.conformance, pytest.mark.xdist_group("letta")]


def _assistant_text(messages: list[dict[str, object]]) -> str:
    return "".join(str(m.get("content")) for m in messages if m.get("message_type") == "assistant_message")


def _streamed(text: str) -> list[dict[str, object]]:
    """The messages of a Letta SSE answer, in order."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: {")]
    return [json.loads(event) for event in events]


def test_a_turn_reaches_the_real_litellm_on_the_users_route_and_is_metered(platform: Platform) -> None:
    alice, gateway = platform.new_user(), platform.gateway
    agent = gateway.new_agent(alice, platform.chat_model)
    reply = gateway.turn(alice, agent)
    assert reply.status_code == 200, reply.text
    assert _assistant_text(reply.json()["messages"]) == "Hello from the mock agent."
    rows = gateway.rows(alice, 1)
    assert [(row["route"], row["model"], row["status"]) for row in rows] == [("chat", platform.chat_model[7:], 200)]
    assert rows[0]["total_tokens"] > 0 and not rows[0]["estimated"]


def test_a_streamed_turn_arrives_event_by_event(platform: Platform) -> None:
    alice, gateway = platform.alice, platform.gateway
    agent = gateway.new_agent(alice, platform.chat_model)
    body = {"messages": [{"role": "user", "content": "hello"}], "stream_tokens": platform.version != "0.11.7"}
    # (LiteLLM's mock streams carry no tool call, which Letta 0.11's agent needs to end a token stream.)
    with httpx.stream(
        "POST",
        f"{gateway.url}/api/v1/letta/agents/{agent}/messages/stream",
        headers=alice.headers,
        json=body,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert any('"assistant_message"' in event for event in events)
    assert gateway.rows(alice, 1)


def test_a_tool_loop_with_streamed_tool_calls_and_null_usage_details_is_metered_exactly(platform: Platform) -> None:
    alice, gateway, fake = platform.new_user(), platform.fake_gateway, platform.fake_litellm
    agent = gateway.new_agent(alice, "letta-loop")
    before = len(fake.for_user(alice.id))
    for stream_tokens in (False, True):
        body = {"messages": [{"role": "user", "content": "look it up"}], "stream_tokens": stream_tokens}
        answer = gateway.call(alice, "POST", f"/agents/{agent}/messages/stream", json=body)
        assert answer.status_code == 200, answer.text
        events = _streamed(answer.text)
        assert [e for e in events if e.get("message_type") == "stop_reason"][-1]["stop_reason"] == "end_turn"
        assert [e for e in events if e.get("message_type") == "usage_statistics"][-1]["step_count"] == 2
        assert _assistant_text(events) == LETTA_ANSWER
    calls = fake.for_user(alice.id)[before:]
    # Two turns of two LLM calls each (the search, then the answer), every one with the user's
    # own key, the token stream's with the usage the gateway asks for.
    assert len(calls) == 4
    assert {call.headers["Authorization"] for call in calls} == {f"Bearer sk-{alice.id}"}
    streamed = [call.body for call in calls if call.body and call.body.get("stream")]
    assert len(streamed) == 2 and all(body["stream_options"]["include_usage"] for body in streamed)
    rows = [row for row in gateway.rows(alice, 4) if row["model"] == "letta-loop"]
    assert len(rows) == 4 and {row["total_tokens"] for row in rows} == {USAGE["total_tokens"]}
    assert not any(row["estimated"] for row in rows)


def test_null_usage_details_reach_letta_as_zeros_in_a_sync_turn(platform: Platform) -> None:
    # Letta 0.11 refuses `cached_tokens: null` (and reads a missing one as null): the turn fails
    # unless the gateway sends 0.
    alice, gateway = platform.alice, platform.fake_gateway
    agent = gateway.new_agent(alice, "letta-loop")
    reply = gateway.turn(alice, agent)
    assert reply.status_code == 200, reply.text
    assert _assistant_text(reply.json()["messages"]) == LETTA_ANSWER


def test_an_upload_is_embedded_through_the_users_route(platform: Platform) -> None:
    alice, gateway = platform.alice, platform.gateway
    folder = gateway.call(
        alice,
        "POST",
        "/folders",
        json={"name": f"notes-{time.time_ns()}", "embedding": "openai/text-embedding-3-small"},
    )
    assert folder.status_code == 200, folder.text
    uploaded = gateway.call(
        alice,
        "POST",
        f"/folders/{folder.json()['id']}/upload",
        files={"file": ("notes.txt", b"The word is banana.\n" * 30, "text/plain")},
    )
    assert uploaded.status_code == 200, uploaded.text
    processed = platform.wait_for_file(alice, folder.json()["id"])
    assert processed["processing_status"] == "completed"
    rows = [row for row in gateway.rows(alice, 1) if row["route"] == "embeddings"]
    assert rows and rows[0]["model"] == "text-embedding-3-small" and rows[0]["status"] == 200
