"""Letta 0.16's new route families through the gateway: conversations and archives allowed with
ownership proven through the user's agents (and the gateway's own record of what it saw
created), identities refused; on Letta 0.11, which has none of them, Letta's own 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conformance.conftest import Platform

pytestmark = [pytest.mark.conformance, pytest.mark.xdist_group("letta")]


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url.path}: {response.text}"
    return response.json() if response.content else None


def test_conversations_are_the_users_through_their_agent(platform: Platform) -> None:
    alice, bob = platform.new_user("alice"), platform.new_user("bob")
    agent = platform.gateway.new_agent(alice, platform.chat_model)
    created = platform.call(alice, "POST", "/conversations", params={"agent_id": agent}, json={"summary": "trip"})
    if platform.version == "0.11.7":
        assert created.status_code == 404  # Letta 0.11 has no conversations
        return
    conversation = _ok(created)["id"]
    assert conversation in [
        c["id"] for c in _ok(platform.call(alice, "GET", "/conversations", params={"agent_id": agent}))
    ]
    _ok(platform.call(alice, "PATCH", f"/conversations/{conversation}", json={"summary": "holiday"}))
    sent = platform.call(
        alice, "POST", f"/conversations/{conversation}/messages", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert sent.status_code == 200, sent.text
    assert "Hello from the mock agent." in sent.text
    assert _ok(platform.call(alice, "GET", f"/conversations/{conversation}/messages"))
    assert any(row["route"] == "chat" for row in platform.gateway.rows(alice, 1))
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/conversations/{conversation}", {}),
        ("PATCH", f"/conversations/{conversation}", {"json": {"summary": "mine"}}),
        ("POST", f"/conversations/{conversation}/messages", {"json": {"messages": [{"role": "user", "content": "x"}]}}),
        ("DELETE", f"/conversations/{conversation}", {}),
        ("GET", "/conversations", {"params": {"agent_id": agent}}),
        ("POST", "/conversations", {"params": {"agent_id": agent}, "json": {}}),
        ("GET", "/conversations", {}),
    ]
    for method, path, kwargs in attempts:
        assert platform.call(bob, method, path, **kwargs).status_code == 403, (method, path)
    refused = platform.call(
        alice, "POST", "/conversations", params={"agent_id": agent}, json={"model": "anthropic/claude-3-5-sonnet"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    assert platform.call(alice, "DELETE", f"/conversations/{conversation}").status_code == 200


def test_archives_are_the_users_who_made_them_or_whose_agents_hold_them(platform: Platform) -> None:
    alice, bob = platform.new_user("alice"), platform.new_user("bob")
    body = {
        "name": f"archive-{uuid.uuid4().hex[:8]}",
        "embedding_config": {
            "embedding_model": "text-embedding-3-small",
            "embedding_endpoint": f"{platform.catcher.url}/v1",
        },
    }
    created = platform.call(alice, "POST", "/archives", json=body)
    if platform.version == "0.11.7":
        assert created.status_code == 404  # Letta 0.11 has no archives
        return
    archive = _ok(created)
    mine = f"{platform.gateway.url}/api/v1/agents/{alice.id}/messages"
    assert archive["embedding_config"]["embedding_endpoint"] == mine
    agent = platform.gateway.new_agent(alice, platform.chat_model)
    _ok(platform.call(alice, "PATCH", f"/agents/{agent}/archives/attach/{archive['id']}"))
    assert [a["id"] for a in _ok(platform.call(alice, "GET", f"/archives/{archive['id']}/agents"))] == [agent]
    assert archive["id"] in [a["id"] for a in _ok(platform.call(alice, "GET", "/archives", params={"agent_id": agent}))]
    passages = _ok(platform.call(alice, "POST", f"/archives/{archive['id']}/passages", json={"text": "shared note"}))
    passage = (passages[0] if isinstance(passages, list) else passages)["id"]
    _ok(platform.call(alice, "PATCH", f"/archives/{archive['id']}", json={"description": "notes"}))
    bobs = platform.gateway.new_agent(bob, platform.chat_model)
    for method, path in [
        ("GET", f"/archives/{archive['id']}"),
        ("PATCH", f"/agents/{bobs}/archives/attach/{archive['id']}"),
        ("POST", f"/archives/{archive['id']}/passages"),
        ("DELETE", f"/archives/{archive['id']}/passages/{passage}"),
        ("DELETE", f"/archives/{archive['id']}"),
        ("GET", "/archives"),
    ]:
        response = platform.call(bob, method, path, json={"text": "x"} if method == "POST" else None)
        assert response.status_code == 403, (method, path, response.text)
    assert platform.call(alice, "DELETE", f"/archives/{archive['id']}/passages/{passage}").status_code in (200, 204)
    _ok(platform.call(alice, "PATCH", f"/agents/{agent}/archives/detach/{archive['id']}"))
    # Made through the gateway, it stays Alice's with no agent attached.
    assert _ok(platform.call(alice, "GET", f"/archives/{archive['id']}"))["id"] == archive["id"]
    assert platform.call(alice, "DELETE", f"/archives/{archive['id']}").status_code in (200, 204)
    assert platform.catcher.caught == []


def test_identities_are_refused_even_for_the_users_own_agents(platform: Platform) -> None:
    alice = platform.new_user("alice")
    agent = platform.gateway.new_agent(alice, platform.chat_model)
    identity = f"identity-{uuid.uuid4()}"
    for method, path in [
        ("PATCH", f"/agents/{agent}/identities/attach/{identity}"),
        ("PATCH", f"/agents/{agent}/identities/detach/{identity}"),
        ("GET", "/identities"),
        ("POST", "/identities"),
    ]:
        assert platform.call(alice, method, path).status_code == 403, path
