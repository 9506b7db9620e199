"""The frontend routes (SPEC §6) over real sockets: Supabase tokens, Letta and AMS fakes, CORS,
breakers, caching, and profiles served by a PostgREST fake backed by the real PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import GatewayProcess, add_profile, new_user, run, wait_for_rows
from tests.fakes.letta import LETTA_KEY, FakeAMS, FakeLetta
from tests.fakes.litellm import FakeLiteLLM

pytestmark = pytest.mark.xdist_group("frontend_routes")  # one worker: its fakes and gateway start once, not on each

JWT_SECRET = "supabase-jwt-secret-for-tests-0123456789abcdef"
ORIGIN = "http://app.example"


def token(user_id: str, **claims: Any) -> str:
    payload = {"sub": user_id, "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 600}
    return jwt.encode({**payload, **claims}, JWT_SECRET, algorithm="HS256")


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user_id)}"}


@pytest.fixture(scope="module")
def letta() -> Iterator[FakeLetta]:
    fake = FakeLetta()
    fake.start()
    yield fake
    fake.release.set()
    fake.stop()


@pytest.fixture(scope="module")
def ams() -> Iterator[FakeAMS]:
    fake = FakeAMS()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def frontend(launch_gateway: Any, letta: FakeLetta, ams: FakeAMS) -> GatewayProcess:
    gateway: GatewayProcess = launch_gateway(
        SUPABASE_JWT_SECRET=JWT_SECRET,
        LETTA_BASE_URL=letta.url,
        LETTA_API_KEY=LETTA_KEY,
        AMS_BASE_URL=ams.url,
        ALLOWED_ORIGINS=ORIGIN,
        PUBLIC_BASE_URL="http://gateway.internal:8000",
    )
    return gateway


def test_a_user_lists_only_own_agents(frontend: GatewayProcess, letta: FakeLetta) -> None:
    alice, bob = new_user(), new_user()
    mine = letta.add_agent(alice)
    theirs = letta.add_agent(bob)
    response = httpx.get(
        f"{frontend.url}/api/v1/letta/agents", params={"tags": f"owner:{bob}", "limit": "5"}, headers=auth(alice)
    )
    assert response.status_code == 200
    assert [agent["id"] for agent in response.json()] == [mine]
    seen = letta.requests[-1]
    assert ("tags", f"owner:{alice}") in seen.query and ("match_all_tags", "true") in seen.query
    assert ("tags", f"owner:{bob}") not in seen.query and ("limit", "5") in seen.query
    assert seen.headers["Authorization"] == f"Bearer {LETTA_KEY}"
    assert theirs in letta.agents


def test_another_users_agent_is_403_and_never_reached(frontend: GatewayProcess, letta: FakeLetta) -> None:
    alice, bob = new_user(), new_user()
    mine, theirs = letta.add_agent(alice), letta.add_agent(bob)
    base = f"{frontend.url}/api/v1/letta"
    assert httpx.get(f"{base}/agents/{mine}", headers=auth(alice)).status_code == 200
    for method, path in [
        ("GET", f"/agents/{theirs}"),
        ("POST", f"/agents/{theirs}/messages"),
        ("DELETE", f"/agents/{theirs}"),
        ("GET", f"/runs/{letta.run_of(theirs)}"),
    ]:
        before = len(letta.requests)
        response = httpx.request(method, base + path, headers=auth(alice), json={} if method == "POST" else None)
        assert response.status_code == 403, path
        assert response.json()["error"]["type"] == "permission_error"
        # Only the gateway's own ownership look-ups (GETs) may have reached Letta.
        assert all(seen.method == "GET" for seen in letta.requests[before:])
    assert httpx.get(f"{base}/runs/{letta.run_of(mine)}", headers=auth(alice)).status_code == 200


def test_created_agents_are_tagged_and_bill_through_the_gateway(frontend: GatewayProcess, letta: FakeLetta) -> None:
    alice, bob = new_user(), new_user()
    body = {
        "name": "helper",
        "tags": ["team:x", f"owner:{bob}"],
        "llm_config": {"model": "gpt-4o-mini", "model_endpoint": "http://evil.example/v1", "context_window": 8000},
    }
    created = httpx.post(f"{frontend.url}/api/v1/letta/agents", headers=auth(alice), json=body).json()
    stored = letta.agents[created["id"]]
    assert stored["tags"] == ["team:x", f"owner:{alice}"]
    assert stored["llm_config"]["model_endpoint"] == f"http://gateway.internal:8000/api/v1/agents/{alice}/messages"
    # Right after creating it, the agent is the user's own.
    assert httpx.get(f"{frontend.url}/api/v1/letta/agents/{created['id']}", headers=auth(alice)).status_code == 200
    patch = {"llm_config": {"model": "gpt-4o", "model_endpoint": "http://evil.example"}, "tags": [f"owner:{bob}"]}
    httpx.patch(f"{frontend.url}/api/v1/letta/agents/{created['id']}", headers=auth(alice), json=patch)
    assert letta.agents[created["id"]]["llm_config"]["model_endpoint"].endswith(f"/agents/{alice}/messages")
    assert letta.agents[created["id"]]["tags"] == [f"owner:{alice}"]


def test_letta_streams_arrive_chunk_by_chunk(frontend: GatewayProcess, letta: FakeLetta) -> None:
    alice = new_user()
    run(add_profile(frontend.database_url, alice))  # a turn needs a profile: its LLM calls bill the user
    agent = letta.add_agent(alice)
    letta.release.clear()
    released: list[float] = []

    def release_later() -> None:
        time.sleep(1.0)
        released.append(time.monotonic())
        letta.release.set()

    threading.Thread(target=release_later, daemon=True).start()
    url = f"{frontend.url}/api/v1/letta/agents/{agent}/messages/stream"
    with httpx.stream("POST", url, headers=auth(alice), json={"messages": []}, timeout=20) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic()
        rest = b"".join(chunks)
    assert b"reasoning_message" in first
    assert not released or first_at < released[0]  # the first chunk came before Letta was let go on
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" in rest


def test_uploads_arrive_intact(frontend: GatewayProcess, letta: FakeLetta) -> None:
    import hashlib

    alice, bob = new_user(), new_user()
    source = httpx.post(
        f"{frontend.url}/api/v1/letta/sources", headers=auth(alice), json={"name": "docs", "metadata": {"owner": bob}}
    ).json()
    assert letta.sources[source["id"]]["metadata"] == {"owner": alice}
    content = os.urandom(3 * 1024 * 1024 + 17)
    response = httpx.post(
        f"{frontend.url}/api/v1/letta/sources/{source['id']}/upload",
        headers=auth(alice),
        files={"file": ("notes.bin", content, "application/octet-stream")},
        timeout=30,
    )
    assert response.status_code == 200
    assert letta.uploads[source["id"]] == ("notes.bin", len(content), hashlib.sha256(content).hexdigest())
    listed = httpx.get(f"{frontend.url}/api/v1/letta/sources", headers=auth(bob)).json()
    assert source["id"] not in [item["id"] for item in listed]
    other = httpx.post(
        f"{frontend.url}/api/v1/letta/sources/{source['id']}/upload", headers=auth(bob), files={"file": ("x", b"x")}
    )
    assert other.status_code == 403


def test_uploads_over_the_cap_are_413(gateway_factory: Any, letta: FakeLetta) -> None:
    gw = gateway_factory(
        SUPABASE_JWT_SECRET=JWT_SECRET, LETTA_BASE_URL=letta.url, LETTA_API_KEY=LETTA_KEY, MAX_UPLOAD_BYTES="1000"
    )
    alice = new_user()
    source = httpx.post(f"{gw.url}/api/v1/letta/sources", headers=auth(alice), json={"name": "d"}).json()
    response = httpx.post(
        f"{gw.url}/api/v1/letta/sources/{source['id']}/upload",
        headers=auth(alice),
        files={"file": ("big", b"x" * 5000)},
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    "path",
    [
        "/tools",
        "/tools/add-base-tools",
        "/blocks",
        "/runs",
        "/mcp-servers",
        "/providers",
        "/identities",
        "/admin/users",
        "/tags",
    ],
)
def test_org_wide_and_admin_routes_are_refused(frontend: GatewayProcess, letta: FakeLetta, path: str) -> None:
    before = len(letta.requests)
    response = httpx.get(f"{frontend.url}/api/v1/letta{path}", headers=auth(new_user()))
    assert response.status_code == 403
    assert len(letta.requests) == before


def test_body_ids_must_be_the_users_own(frontend: GatewayProcess, letta: FakeLetta) -> None:
    alice, bob = new_user(), new_user()
    theirs = letta.add_agent(bob)
    url = f"{frontend.url}/api/v1/letta/agents"
    assert httpx.post(url, headers=auth(alice), json={"name": "x", "tool_ids": ["tool-1"]}).status_code == 403
    mine = letta.add_agent(alice)
    response = httpx.post(f"{url}/{mine}/messages", headers=auth(alice), json={"agent_id": theirs, "messages": []})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "path", ["/agents/..%2F..%2Fadmin", "/agents/%2E%2E", "/agents/a%5Cb", "/agents//x", "/agents/a%00b"]
)
def test_path_tricks_are_400(frontend: GatewayProcess, letta: FakeLetta, path: str) -> None:
    before = len(letta.requests)
    response = httpx.get(f"{frontend.url}/api/v1/letta{path}", headers=auth(new_user()))
    assert response.status_code == 400
    assert len(letta.requests) == before


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        jwt.encode(
            {"sub": "x", "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 60},
            "a-different-secret-of-sufficient-length-xyz",
        ),
        token("x", role="anon"),
        token("x", aud="other"),
        token("x", exp=int(time.time()) - 3600),
        token("x", is_anonymous=True),
        token("not a valid id"),
    ],
)
def test_bad_tokens_are_401(frontend: GatewayProcess, letta: FakeLetta, bad: str) -> None:
    before = len(letta.requests)
    response = httpx.get(f"{frontend.url}/api/v1/letta/agents", headers={"Authorization": f"Bearer {bad}"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert bad not in response.text
    assert len(letta.requests) == before


def test_ams_gets_the_users_token_and_id(frontend: GatewayProcess, ams: FakeAMS) -> None:
    alice = new_user()
    user_token = token(alice)
    response = httpx.post(
        f"{frontend.url}/api/v1/ams/projects/p1",
        params={"q": "1"},
        headers={"Authorization": f"Bearer {user_token}", "user_id": "someone-else", "Cookie": "a=b"},
        json={"name": "n"},
    )
    assert response.json() == {"path": "/projects/p1", "method": "POST", "user": alice, "body": {"name": "n"}}
    seen = ams.requests[-1]
    assert seen.headers["Authorization"] == f"Bearer {user_token}"
    assert "user_id" not in seen.headers and "Cookie" not in seen.headers
    assert seen.query == [("q", "1")]


def test_upstream_redirects_point_at_the_gateway_or_are_refused(frontend: GatewayProcess, ams: FakeAMS) -> None:
    alice = new_user()
    moved = httpx.get(f"{frontend.url}/api/v1/ams/redirect/projects/p1", headers=auth(alice))
    assert moved.status_code == 307
    assert moved.headers["location"] == "/api/v1/ams/projects/p1"  # the gateway's route, never AMS's address
    away = httpx.get(f"{frontend.url}/api/v1/ams/redirect/away", headers=auth(alice))
    assert away.status_code == 502 and away.json()["error"]["type"] == "upstream_error"
    assert "evil.example" not in away.text and ams.url not in away.text


def test_me_comes_from_ams_and_is_cached(frontend: GatewayProcess, ams: FakeAMS) -> None:
    alice = new_user()
    ams.agents_of[alice] = ["agent-1"]
    first = httpx.get(f"{frontend.url}/api/v1/me", headers=auth(alice))
    assert first.json() == {"id": alice, "agents": [{"id": "agent-1"}]}
    calls = len([seen for seen in ams.requests if seen.path == "/me"])
    second = httpx.get(f"{frontend.url}/api/v1/me", headers=auth(alice))
    assert second.json() == first.json() and second.headers.get("x-cache") == "hit"
    assert len([seen for seen in ams.requests if seen.path == "/me"]) == calls


def test_me_without_ams_is_the_gateways_own_view(gateway_factory: Any) -> None:
    gw = gateway_factory(SUPABASE_JWT_SECRET=JWT_SECRET)
    alice = new_user()
    run(add_profile(gw.database_url, alice, allowed_models=frozenset({"gpt-4o"}), monthly_limit=5000))
    me = httpx.get(f"{gw.url}/api/v1/me", headers=auth(alice)).json()
    assert me["id"] == alice and me["allowed_models"] == ["gpt-4o"] and me["monthly_limit"] == 5000
    assert me["usage"]["total_tokens"] == 0
    assert httpx.get(f"{gw.url}/api/v1/letta/agents", headers=auth(alice)).status_code == 404


def test_llm_routes_run_the_agent_pipeline_for_the_signed_in_user(
    frontend: GatewayProcess, litellm: FakeLiteLLM
) -> None:
    from openai import OpenAI

    alice = new_user()
    run(add_profile(frontend.database_url, alice, allowed_models=frozenset({"gpt-4o-mini"})))
    client = OpenAI(base_url=f"{frontend.url}/api/v1/llm", api_key=token(alice), max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.usage is not None and completion.usage.total_tokens == 18
    assert litellm.for_user(alice)[-1].headers["Authorization"] == f"Bearer sk-user-key-{alice}"
    assert [model.id for model in client.models.list()] == ["gpt-4o-mini"]
    rows = run(wait_for_rows(frontend.database_url, alice, 1))
    assert rows[0]["total_tokens"] == 18


def test_cors_preflight_for_allowed_origin_only(frontend: GatewayProcess) -> None:
    request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{frontend.url}/api/v1/letta/agents", headers={"Origin": ORIGIN, **request})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    other = httpx.options(f"{frontend.url}/api/v1/letta/agents", headers={"Origin": "http://evil.example", **request})
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(f"{frontend.url}/api/v1/me", headers={"Origin": ORIGIN, **auth(new_user())})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
    agent = httpx.options(
        f"{frontend.url}/api/v1/agents/u/messages/chat/completions", headers={"Origin": ORIGIN, **request}
    )
    assert "access-control-allow-origin" not in agent.headers  # no CORS on agent routes


def test_breaker_opens_answers_at_once_and_recovers(gateway_factory: Any) -> None:
    letta = FakeLetta()
    letta.start()
    gw = gateway_factory(
        SUPABASE_JWT_SECRET=JWT_SECRET,
        LETTA_BASE_URL=letta.url,
        LETTA_API_KEY=LETTA_KEY,
        BREAKER_THRESHOLD="3",
        BREAKER_COOLDOWN_SECONDS="2",
    )
    alice = new_user()
    url = f"{gw.url}/api/v1/letta/health"
    assert httpx.get(url, headers=auth(alice)).status_code == 200
    letta.stop()
    assert [httpx.get(url, headers=auth(alice)).status_code for _ in range(3)] == [502, 502, 502]
    started = time.monotonic()
    refused = httpx.get(url, headers=auth(alice))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "circuit_open"
    assert time.monotonic() - started < 1.0 and int(refused.headers["retry-after"]) >= 1
    health = httpx.get(f"{gw.url}/health").json()
    assert health["checks"]["letta"]["breaker"] == "open" and health["status"] == "error"
    assert 'gateway_circuit_breaker_open{upstream="letta"} 1.0' in httpx.get(f"{gw.url}/metrics").text

    letta.start()  # the same port again
    time.sleep(2.2)
    assert httpx.get(url, headers=auth(alice)).status_code == 200
    assert httpx.get(f"{gw.url}/health").json()["checks"]["letta"]["breaker"] == "closed"
    letta.stop()


def test_profiles_from_postgrest_serve_the_agent_route(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    from tests.fakes.postgrest import SB_SECRET_KEY, FakePostgrest

    postgrest = FakePostgrest(service_key=SB_SECRET_KEY).start()
    try:
        gw = gateway_factory(SUPABASE_URL=postgrest.url, SUPABASE_SERVICE_ROLE_KEY=SB_SECRET_KEY)
        alice = new_user()
        postgrest.add(alice, f"sk-from-supabase-{alice}", allowed_models=["gpt-4o-mini"], monthly_limit=None)
        completion = gw.client(alice).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.usage is not None
        assert litellm.for_user(alice)[-1].headers["Authorization"] == f"Bearer sk-from-supabase-{alice}"
        assert postgrest.for_user(alice)[-1].headers["apikey"] == SB_SECRET_KEY
        denied = httpx.post(
            f"{gw.agent_base(new_user())}/chat/completions",
            headers={"Authorization": "Bearer test-agent-secret-7f3a9c"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "user_not_found"
    finally:
        postgrest.stop()


def test_ams_ownership_mode_uses_the_agents_ams_lists(gateway_factory: Any, letta: FakeLetta, ams: FakeAMS) -> None:
    gw = gateway_factory(
        SUPABASE_JWT_SECRET=JWT_SECRET,
        LETTA_BASE_URL=letta.url,
        LETTA_API_KEY=LETTA_KEY,
        AMS_BASE_URL=ams.url,
        LETTA_OWNERSHIP="ams",
    )
    alice = new_user()
    listed, unlisted = letta.add_agent(None), letta.add_agent(None)  # no owner tags: AMS decides
    ams.agents_of[alice] = [listed]
    agents = httpx.get(f"{gw.url}/api/v1/letta/agents", headers=auth(alice)).json()
    assert [agent["id"] for agent in agents] == [listed]
    assert httpx.get(f"{gw.url}/api/v1/letta/agents/{listed}", headers=auth(alice)).status_code == 200
    assert httpx.get(f"{gw.url}/api/v1/letta/agents/{unlisted}", headers=auth(alice)).status_code == 403
    assert ams.requests[-1].headers["Authorization"].startswith("Bearer ey")


def test_network_and_multi_agent_tools_only_when_named_in_letta_allowed_tools(
    gateway_factory: Any, letta: FakeLetta
) -> None:
    gw = gateway_factory(
        SUPABASE_JWT_SECRET=JWT_SECRET,
        LETTA_BASE_URL=letta.url,
        LETTA_API_KEY=LETTA_KEY,
        LETTA_ALLOWED_TOOLS="web_search",
    )
    alice = new_user()
    url = f"{gw.url}/api/v1/letta/agents"
    allowed = httpx.post(url, headers=auth(alice), json={"name": "a", "tools": ["web_search", "send_message"]})
    assert allowed.status_code == 200 and letta.agents[allowed.json()["id"]]["tools"] == ["web_search", "send_message"]
    for body in (
        {"name": "b", "tools": ["fetch_webpage"]},
        {"name": "c", "tools": ["send_message_to_agents_matching_tags"]},
        {"name": "d", "include_multi_agent_tools": True},
    ):
        refused = httpx.post(url, headers=auth(alice), json=body)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error", body
