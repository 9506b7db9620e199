"""The Letta guard in process: route table, body allow-lists and ownership proofs, against a
stand-in for the handful of Letta lookups it makes (the real Letta is tests/conformance/)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from agent_gateway.errors import BadRequest, Forbidden, GatewayError
from agent_gateway.frontend.letta.guard import LettaGuard
from agent_gateway.frontend.letta.ownership import Agent, Owners
from agent_gateway.frontend.letta.rules import Answer, match
from agent_gateway.frontend.passthrough import ServiceCall
from agent_gateway.stores.database import Database
from agent_gateway.stores.letta_objects import LettaObjects

ENDPOINT = "http://gw.internal/api/v1/agents/alice/messages"
LETTA: dict[str, Any] = {
    "/agents/agent-a": {"id": "agent-a", "tags": ["owner:alice"], "llm_config": {"model": "gpt-4o", "max_tokens": 500}},
    "/agents/agent-b": {"id": "agent-b", "tags": ["owner:bob"], "llm_config": {"model": "gpt-4o"}},
    "/sources/source-a": {"id": "source-a", "metadata": {"owner": "alice"}},
    "/sources/source-b": {"id": "source-b", "metadata": {"owner": "bob"}},
    "/runs/run-a": {"id": "run-a", "metadata": {"agent_id": "agent-a"}},
    "/runs/run-done": {"id": "run-done", "metadata": {"result": {}}},
    "/runs/run-done/steps": [{"id": "step-1", "agent_id": "agent-a"}],
    "/sources/source-a/files/file-a": {"id": "file-a", "source_id": "source-a"},
}


async def fetch(path: str, query: dict[str, str] | None) -> tuple[int, Any]:
    found = LETTA.get(path)
    return (200, found) if found is not None else (404, {"detail": "not found"})


@pytest.fixture
async def guard(tmp_path: Any) -> AsyncIterator[LettaGuard]:
    database = Database(f"sqlite:///{tmp_path}/gw.db")
    await database.start()
    preflights: list[tuple[str, Agent]] = []

    async def preflight(user_id: str, agent: Agent) -> None:
        preflights.append((user_id, agent))

    guard = LettaGuard(Owners(fetch, LettaObjects(database)), "letta-pw", "http://gw.internal", frozenset(), preflight)
    guard.preflights = preflights  # type: ignore[attr-defined]
    yield guard
    await database.close()


def call(method: str, path: str, body: Any = None, query: str = "") -> ServiceCall:
    segments = path.strip("/").split("/")
    return ServiceCall(method, segments, query, {}, orjson.dumps(body) if body is not None else None)


def test_collections_take_their_trailing_slash_and_unknown_routes_none() -> None:
    found = match(["agents"], "GET")
    assert found is not None and found[0].slash and found[0].answer is Answer.OWN_AGENTS
    assert match(["agents", "count"], "GET")[0].local  # type: ignore[index]
    assert match(["tools"], "GET") is None and match(["agents", "a", "tools"], "POST") is None
    assert match(["agents", "a", "messages"], "POST")[1] == {"agent_id": "a"}  # type: ignore[index]


async def test_lists_are_forced_to_the_owner_tag(guard: LettaGuard) -> None:
    listing = call("GET", "agents", query="tags=owner:bob&tags=team&match_all_tags=false&limit=5")
    await guard.plan("alice", listing, None)
    assert listing.segments == ["agents", ""]
    assert parse_qsl(listing.query) == [
        ("tags", "team"),
        ("limit", "5"),
        ("tags", "owner:alice"),
        ("match_all_tags", "true"),
    ]


async def test_created_agents_get_the_owner_tag_and_the_users_route(guard: LettaGuard) -> None:
    create = call(
        "POST", "agents", {"name": "x", "tags": ["owner:bob", "t"], "model": "openai/gpt-4o", "embedding": "openai/e"}
    )
    await guard.plan("alice", create, None)
    body = orjson.loads(create.body or b"")
    assert body["tags"] == ["t", "owner:alice"] and "model" not in body and "embedding" not in body
    assert body["llm_config"] == {
        "model": "gpt-4o",
        "context_window": 128000,
        "model_endpoint_type": "openai",
        "model_endpoint": ENDPOINT,
        "provider_category": "base",
    }
    assert (
        body["embedding_config"]["embedding_endpoint"] == ENDPOINT
        and create.headers["Authorization"] == "Bearer letta-pw"
    )


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ({"name": "x", "some_future_field": 1}, BadRequest),
        ({"name": "x", "tool_ids": ["tool-1"]}, Forbidden),
        ({"name": "x", "widget_id": "w"}, Forbidden),
        ({"name": "x", "tools": ["web_search"]}, Forbidden),
        ({"name": "x", "include_multi_agent_tools": True}, Forbidden),
        ({"name": "x", "llm_config": "not an object"}, BadRequest),
        ({"name": "x", "model_settings": {"provider_type": "anthropic"}}, BadRequest),
        ({"name": "x", "compaction_settings": {"model": "openai/gpt-4o"}}, BadRequest),
        ({"name": "x", "source_ids": ["source-b"]}, Forbidden),
        ({"name": "x", "memory_blocks": [{"label": "l", "value": "v", "template_id": "t"}]}, Forbidden),
    ],
)
async def test_agent_bodies_outside_the_allow_list_are_refused(
    guard: LettaGuard, body: Any, refusal: type[GatewayError]
) -> None:
    with pytest.raises(refusal):
        await guard.plan("alice", call("POST", "agents", body), None)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}], "callback_url": "http://evil.example"},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "letta", "file_id": "f"}}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "override_model": "anthropic/claude"},
    ],
)
async def test_message_fields_that_make_letta_call_out_are_refused(guard: LettaGuard, body: Any) -> None:
    with pytest.raises(GatewayError) as refused:
        await guard.plan("alice", call("POST", "agents/agent-a/messages/async", body), None)
    assert refused.value.status_code in (400, 403)


async def test_a_turn_passes_its_agent_to_the_preflight_and_booleans_are_not_ids(guard: LettaGuard) -> None:
    turn = call(
        "POST", "agents/agent-a/messages", {"messages": [{"role": "user", "content": "hi"}], "return_token_ids": False}
    )
    plan = await guard.plan("alice", turn, None)
    assert plan.rule.turn and orjson.loads(turn.body or b"")["return_token_ids"] is False
    assert guard.preflights == [("alice", Agent("agent-a", "alice", "gpt-4o", 500))]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "agents/agent-b"),
        ("GET", "agents/agent-unknown"),
        ("GET", "sources/source-b"),
        ("PATCH", "agents/agent-a/sources/attach/source-b"),
        ("DELETE", "sources/source-a/file-b"),
        ("GET", "runs/run-unknown"),
        ("GET", "agents/agent-a/../agent-b"),
    ],
)
async def test_another_users_ids_are_refused(guard: LettaGuard, method: str, path: str) -> None:
    with pytest.raises(Forbidden):
        await guard.plan("alice", call(method, path), None)


async def test_runs_are_proven_while_running_and_when_finished(guard: LettaGuard) -> None:
    await guard.plan("alice", call("GET", "runs/run-a"), None)  # metadata.agent_id
    await guard.plan("alice", call("GET", "runs/run-done"), None)  # a finished 0.11 run: its steps
    with pytest.raises(Forbidden):
        await guard.plan("bob", call("GET", "runs/run-done"), None)
    await guard.plan("alice", call("DELETE", "sources/source-a/file-a"), None)  # in the folder


async def test_what_the_gateway_saw_created_stays_provable(guard: LettaGuard) -> None:
    create = await guard.plan("alice", call("POST", "agents/agent-a/messages/async", {"messages": []}), None)
    assert create.edit is not None
    await create.edit({"id": "run-new", "status": "created"})  # Letta knows nothing of it yet
    await guard.plan("alice", call("GET", "runs/run-new"), None)
    with pytest.raises(Forbidden):
        await guard.plan("bob", call("GET", "runs/run-new"), None)
