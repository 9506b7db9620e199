"""One user against another, and against the platform, on the real Letta: every cross-tenant id is
refused before Letta acts on it, and no body can make Letta call anything but the gateway's
per-user routes (the catcher stands where an attacker would point it)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conformance.conftest import Platform, User

pytestmark = [pytest.mark.conformance, pytest.mark.xdist_group("letta")]


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url.path}: {response.text}"
    return response.json() if response.content else None


@pytest.fixture
def alices(platform: Platform) -> dict[str, str]:
    """Alice's agent, with a message, a run, a step, a folder with a file (attached), and a passage."""
    alice = platform.alice
    agent = platform.gateway.new_agent(alice, platform.chat_model)
    run = _ok(
        platform.call(
            alice, "POST", f"/agents/{agent}/messages/async", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    )
    folder = _ok(
        platform.call(
            alice,
            "POST",
            "/folders",
            json={"name": f"f-{uuid.uuid4().hex[:8]}", "embedding": "openai/text-embedding-3-small"},
        )
    )["id"]
    _ok(
        platform.call(
            alice,
            "POST",
            f"/folders/{folder}/upload",
            files={"file": ("a.txt", b"alice's secret\n" * 10, "text/plain")},
        )
    )
    file = platform.wait_for_file(alice, folder)["id"]
    _ok(platform.call(alice, "PATCH", f"/agents/{agent}/folders/attach/{folder}"))
    deadline = time.monotonic() + 60
    while _ok(platform.call(alice, "GET", f"/runs/{run['id']}"))["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    step = _ok(platform.call(alice, "GET", f"/runs/{run['id']}/steps"))[0]["id"]
    message = _ok(platform.call(alice, "GET", f"/agents/{agent}/messages"))[0]["id"]
    return {"agent": agent, "run": run["id"], "step": step, "folder": folder, "file": file, "message": message}


def test_another_users_objects_are_refused_and_never_touched(platform: Platform, alices: dict[str, str]) -> None:
    bob, a = platform.bob, alices
    bobs_agent = platform.gateway.new_agent(bob, platform.chat_model)
    refused = [
        ("GET", f"/agents/{a['agent']}", None),
        ("PATCH", f"/agents/{a['agent']}", {"name": "mine now"}),
        ("DELETE", f"/agents/{a['agent']}", None),
        ("GET", f"/agents/{a['agent']}/messages", None),
        ("POST", f"/agents/{a['agent']}/messages", {"messages": [{"role": "user", "content": "hi"}]}),
        ("POST", f"/agents/{a['agent']}/messages/async", {"messages": [{"role": "user", "content": "hi"}]}),
        ("GET", f"/agents/{a['agent']}/archival-memory", None),
        ("GET", f"/agents/{a['agent']}/core-memory", None),
        ("GET", f"/runs/{a['run']}", None),
        ("GET", f"/runs/{a['run']}/messages", None),
        ("GET", f"/steps/{a['step']}", None),
        ("GET", f"/folders/{a['folder']}", None),
        ("GET", f"/folders/{a['folder']}/files", None),
        ("DELETE", f"/folders/{a['folder']}", None),
        ("POST", f"/folders/{a['folder']}/upload", None),
        # Alice's objects under Bob's own agent: Letta would not check they belong there.
        ("PATCH", f"/agents/{bobs_agent}/folders/attach/{a['folder']}", None),
        ("PATCH", f"/agents/{bobs_agent}/files/{a['file']}/open", None),
        ("PATCH", f"/agents/{bobs_agent}/messages/{a['message']}", {"message_type": "user_message", "content": "x"}),
        ("DELETE", f"/agents/{bobs_agent}/archival-memory/passage-{uuid.uuid4()}", None),
        ("POST", f"/agents/{bobs_agent}/messages/cancel", {"run_ids": [a["run"]]}),
        ("GET", "/runs", None),
        ("GET", "/runs/", None),
        ("POST", "/agents", {"name": "x", "folder_ids": [a["folder"]]}),
        ("POST", "/agents", {"name": "x", "source_ids": [a["folder"]]}),
    ]
    for method, path, body in refused:
        if path.endswith("/upload"):
            response = platform.call(bob, method, path, files={"file": ("b.txt", b"bob", "text/plain")})
        else:
            response = platform.call(bob, method, path, json=body)
        assert response.status_code == 403, (method, path, response.status_code, response.text)
        assert response.json()["error"]["type"] == "permission_error"
    for path in ("/agents", "/folders", "/sources"):
        listed = [item["id"] for item in _ok(platform.call(bob, "GET", path))]
        assert not set(listed) & {a["agent"], a["folder"]}
    # Alice's things are as she left them.
    agent = _ok(platform.call(platform.alice, "GET", f"/agents/{a['agent']}"))
    assert agent["name"] != "mine now"
    assert [f["id"] for f in _ok(platform.call(platform.alice, "GET", f"/folders/{a['folder']}/files"))] == [a["file"]]
    assert a["folder"] not in [f["id"] for f in _ok(platform.letta_direct("GET", f"/agents/{bobs_agent}/folders"))]


def test_no_body_can_point_letta_anywhere_but_the_users_route(platform: Platform) -> None:
    alice, other, catcher = platform.new_user("mallory"), platform.new_user(), platform.catcher
    elsewhere = f"{catcher.url}/v1"
    theirs = f"{platform.gateway.url}/api/v1/agents/{other.id}/messages"
    mine = f"{platform.gateway.url}/api/v1/agents/{alice.id}/messages"
    folder = _ok(
        platform.call(
            alice,
            "POST",
            "/folders",
            json={
                "name": f"f-{uuid.uuid4().hex[:8]}",
                "embedding_config": {
                    "embedding_model": "text-embedding-3-small",
                    "embedding_endpoint": elsewhere,
                    "embedding_endpoint_type": "openai",
                    "embedding_dim": 1536,
                },
            },
        )
    )
    assert folder["embedding_config"]["embedding_endpoint"] == mine
    patched = platform.call(
        alice,
        "PATCH",
        f"/folders/{folder['id']}",
        json={"embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint": theirs}},
    )
    assert _ok(patched)["embedding_config"]["embedding_endpoint"] == mine
    _ok(
        platform.call(
            alice, "POST", f"/folders/{folder['id']}/upload", files={"file": ("x.txt", b"words\n" * 10, "text/plain")}
        )
    )
    assert platform.wait_for_file(alice, folder["id"])["processing_status"] == "completed"
    agent = platform.gateway.new_agent(
        alice,
        platform.chat_model,
        llm_config={
            "model": "gpt-4o",
            "model_endpoint": elsewhere,
            "model_endpoint_type": "anthropic",
            "provider_name": "anthropic",
        },
    )
    stored = _ok(platform.letta_direct("GET", f"/agents/{agent}"))
    assert (stored["llm_config"]["model_endpoint"], stored["llm_config"]["model_endpoint_type"]) == (mine, "openai")
    assert stored["embedding_config"]["embedding_endpoint"] == mine
    _ok(platform.gateway.turn(alice, agent))
    refused = [
        (
            "POST",
            f"/agents/{agent}/messages/async",
            {"messages": [{"role": "user", "content": "hi"}], "callback_url": f"{catcher.url}/cb"},
        ),
        (
            "POST",
            f"/agents/{agent}/messages",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": f"{catcher.url}/i.png"}}],
                    }
                ]
            },
        ),
        (
            "POST",
            f"/agents/{agent}/messages",
            {"messages": [{"role": "user", "content": "hi"}], "override_model": "anthropic/claude-3-5-sonnet"},
        ),
        ("POST", "/agents", {"name": "x", "tools": ["web_search"]}),
        ("POST", "/agents", {"name": "x", "tools": ["send_message_to_agents_matching_tags"]}),
        ("POST", "/agents", {"name": "x", "include_multi_agent_tools": True}),
        ("POST", "/agents", {"name": "x", "tool_exec_environment_variables": {"A": "1"}}),
        ("POST", "/agents", {"name": "x", "model": "openai/gpt-4o", "compaction_settings": {"model": "openai/gpt-4o"}}),
        ("POST", "/agents", {"name": "x", "model": "openai/gpt-4o", "model_settings": {"provider_type": "anthropic"}}),
        ("PATCH", f"/agents/{agent}", {"tool_ids": ["tool-00000000"]}),
        ("POST", "/agents", {"name": "x", "some_future_field": "?"}),
    ]
    for method, path, body in refused:
        response = platform.call(alice, method, path, json=body)
        assert response.status_code in (400, 403), (path, body, response.status_code, response.text)
    time.sleep(1)  # an async run's callback would come after the run
    assert catcher.caught == []
    assert platform.gateway.rows(other, 0, timeout=1) == []  # nothing billed to the user whose route was named
    assert platform.gateway.rows(alice, 2)  # the embedding and the turn, billed to their owner


def test_a_leaked_route_of_another_user_takes_no_tags_or_owner_marks(platform: Platform) -> None:
    alice, bob = platform.alice, platform.bob
    agent = platform.gateway.new_agent(alice, platform.chat_model, tags=[f"owner:{bob.id}", "x"])
    assert sorted(
        _ok(platform.letta_direct("GET", f"/agents/{agent}", params={"include": "agent.tags"}))["tags"]
    ) == sorted([f"owner:{alice.id}", "x"])
    folder = _ok(
        platform.call(
            alice,
            "POST",
            "/folders",
            json={
                "name": f"f-{uuid.uuid4().hex[:8]}",
                "metadata": {"owner": bob.id},
                "embedding": "openai/text-embedding-3-small",
            },
        )
    )
    assert folder["metadata"]["owner"] == alice.id
    changed = platform.call(alice, "PATCH", f"/folders/{folder['id']}", json={"metadata": None})
    assert _ok(changed)["metadata"]["owner"] == alice.id
    listed = platform.call(alice, "GET", "/agents", params={"tags": f"owner:{bob.id}"})
    assert agent in [a["id"] for a in _ok(listed)]  # the client's owner tag is replaced by the user's own


def test_org_wide_and_admin_routes_are_refused(platform: Platform) -> None:
    for method, path in [
        ("GET", "/tools"),
        ("POST", "/tools"),
        ("GET", "/blocks"),
        ("GET", "/tags"),
        ("GET", "/identities"),
        ("GET", "/providers"),
        ("GET", "/admin/users"),
        ("GET", "/steps"),
        ("GET", "/runs/active"),
        ("POST", "/agents/import"),
        ("GET", "/sandbox-config"),
        ("GET", "/mcp-servers"),
        ("POST", "/tools/run"),
        ("GET", "/groups"),
    ]:
        assert platform.call(platform.alice, method, path).status_code == 403, path


def _user_without_profile() -> User:
    from tests.conformance.conftest import signed_in

    return signed_in("nobody")


def test_turns_are_checked_before_letta_runs_them(platform: Platform) -> None:
    from tests.conftest import add_profile, run

    gateway = platform.gateway
    stranger, restricted, capped = (_user_without_profile() for _ in range(3))
    run(
        add_profile(
            gateway.process.database_url, restricted.id, litellm_key="sk-r", allowed_models=frozenset({"gpt-4.1"})
        )
    )
    run(add_profile(gateway.process.database_url, capped.id, litellm_key="sk-c", monthly_limit=1000))
    # Creating an agent bills nothing and needs no profile; a turn runs LLM calls that do.
    agents = {user.id: gateway.new_agent(user, platform.chat_model) for user in (stranger, restricted, capped)}
    refused = gateway.turn(stranger, agents[stranger.id])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "user_not_found"
    refused = gateway.turn(restricted, agents[restricted.id])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    # 1,000 tokens cannot hold one call at DEFAULT_RESERVE_TOKENS: refused before Letta, not its 500.
    over = gateway.turn(capped, agents[capped.id])
    assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"
    assert over.headers["x-should-retry"] == "false"
    for user in (stranger, restricted, capped):
        assert gateway.rows(user, 0, timeout=0) == []


def test_a_slow_turn_is_waited_for_and_one_users_timeouts_close_nothing_for_others(platform: Platform) -> None:
    # The fake gateway waits REQUEST_TIMEOUT=2 s for ordinary answers, LLM_TIMEOUT=6 s for a turn,
    # and opens a breaker after 2 failures in a row.
    from tests.conformance.conftest import TURN_TIMEOUT

    alice, bob, gateway = platform.alice, platform.bob, platform.fake_gateway
    slow = gateway.new_agent(alice, "letta-slow-3")
    started = time.monotonic()
    assert gateway.turn(alice, slow).status_code == 200
    assert time.monotonic() - started > 3
    stuck = gateway.new_agent(alice, "letta-slow-30")
    for _ in range(2):  # as many as the breaker's threshold
        failed = gateway.turn(alice, stuck)
        assert failed.status_code in (500, 502, 504), failed.text  # Letta's or ours: never a breaker's 503
        assert failed.elapsed.total_seconds() < TURN_TIMEOUT + 5
    bobs = gateway.new_agent(bob, "letta-loop")
    assert gateway.turn(bob, bobs).status_code == 200
    health = httpx.get(f"{gateway.url}/health").json()
    assert health["checks"]["letta"]["breaker"] == "closed"


def test_lists_by_agent_show_only_the_users_own(platform: Platform) -> None:
    # Letta 0.11 reads `agent_ids` only: an `agent_id` would list every user's runs.
    alice, bob = platform.new_user("alice"), platform.new_user("bob")
    bobs = platform.gateway.new_agent(bob, platform.chat_model)
    _ok(
        platform.call(
            bob, "POST", f"/agents/{bobs}/messages/async", json={"messages": [{"role": "user", "content": "secret"}]}
        )
    )
    alices = platform.gateway.new_agent(alice, platform.chat_model)
    for name in ("agent_id", "agent_ids"):
        listed = _ok(platform.call(alice, "GET", "/runs", params={name: alices}))
        assert all(run.get("agent_id", run.get("metadata", {}).get("agent_id")) != bobs for run in listed)
        assert "secret" not in str(listed)


def test_a_file_of_another_users_folder_is_not_reached_through_ones_own(platform: Platform) -> None:
    alice, bob = platform.new_user("alice"), platform.new_user("bob")
    body = {"embedding": "openai/text-embedding-3-small"}
    bobs = _ok(platform.call(bob, "POST", "/folders", json={"name": f"b-{uuid.uuid4().hex[:8]}", **body}))["id"]
    _ok(
        platform.call(
            bob, "POST", f"/folders/{bobs}/upload", files={"file": ("b.txt", b"BOB CONFIDENTIAL\n" * 5, "text/plain")}
        )
    )
    file = platform.wait_for_file(bob, bobs)["id"]
    alices = _ok(platform.call(alice, "POST", "/folders", json={"name": f"a-{uuid.uuid4().hex[:8]}", **body}))["id"]
    for method, path in [
        ("GET", f"/sources/{alices}/files/{file}"),
        ("GET", f"/folders/{alices}/files/{file}"),
        ("DELETE", f"/folders/{alices}/{file}"),
        ("DELETE", f"/sources/{alices}/{file}"),
    ]:
        response = platform.call(alice, method, path, params={"include_content": "true"} if method == "GET" else None)
        assert response.status_code == 403 and "CONFIDENTIAL" not in response.text, (method, path)
    assert [f["id"] for f in _ok(platform.call(bob, "GET", f"/folders/{bobs}/files"))] == [file]


def test_a_taken_name_is_a_clean_refusal(platform: Platform) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "embedding": "openai/text-embedding-3-small"}
    _ok(platform.call(platform.new_user("bob"), "POST", "/folders", json=body))
    taken = platform.call(platform.new_user("alice"), "POST", "/folders", json=body)
    assert taken.status_code == 400 and taken.json()["error"]["code"] == "already_exists"
    assert "INSERT" not in taken.text and "org-" not in taken.text


def test_voice_agents_which_letta_wires_to_openai_itself_are_refused(platform: Platform) -> None:
    for agent_type in ("voice_convo_agent", "voice_sleeptime_agent", "sleeptime_agent"):
        body = {"name": "v", "model": "openai/gpt-4o", "agent_type": agent_type, "enable_sleeptime": True}
        assert platform.call(platform.alice, "POST", "/agents", json=body).status_code == 400, agent_type


def test_a_changed_model_is_checked_at_the_next_turn(platform: Platform) -> None:
    model = platform.chat_model.removeprefix("openai/")
    user = platform.new_user("carol", allowed_models=frozenset({model}))
    agent = platform.gateway.new_agent(user, platform.chat_model)
    _ok(platform.gateway.turn(user, agent))
    _ok(platform.call(user, "PATCH", f"/agents/{agent}", json={"model": "openai/gpt-4o-fallback-target"}))
    refused = platform.gateway.turn(user, agent)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
