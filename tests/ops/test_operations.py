"""Operations (SPEC §7): ping, health, metrics, docs, admin usage, logs and what they never show."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import SECRET, USER_KEY_PREFIX, GatewayProcess, add_profile, new_user, run, wait_for_rows
from tests.fakes.litellm import FakeLiteLLM


def test_ping_and_health(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/ping").json() == {"status": "ok"}
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200
    report = health.json()
    assert report["status"] == "ok"
    assert report["checks"]["database"]["status"] == "ok"
    assert report["checks"]["litellm"]["status"] == "ok"
    assert report["checks"]["redis"] == {"status": "not_configured"}


def test_health_finds_litellm_also_behind_a_v1_base_url(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    gw = gateway_factory(LITELLM_BASE_URL=f"{litellm.url}/v1")  # LiteLLM's own docs write it so
    assert httpx.get(f"{gw.url}/health").json()["checks"]["litellm"]["status"] == "ok"


def test_a_gateway_without_an_agent_secret_says_so_at_start(gateway_factory: Any) -> None:
    gw = gateway_factory(AGENT_SECRET_KEY="", AGENT_TOKEN_KEY="")
    assert gw.logs().count("AGENT_SECRET_KEY is not set: every agent call will be refused with 401") == 1


def test_upstream_failures_are_logged_with_their_cause_and_upstream(gateway_factory: Any) -> None:
    from tests.conftest import free_port

    gw = gateway_factory(LITELLM_BASE_URL=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    answer = httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert answer.status_code == 502
    lines = [json.loads(line) for line in gw.logs().splitlines() if "upstream call failed" in line]
    assert lines and lines[0]["upstream"] == "litellm" and lines[0]["cause"] == "cannot connect: Connection refused"


def test_health_with_redis(gateway_factory: Any, redis_url: str) -> None:
    gw = gateway_factory(REDIS_URL=redis_url)
    assert httpx.get(f"{gw.url}/health").json()["checks"]["redis"]["status"] == "ok"


def test_metrics_count_requests_by_route_template_and_tokens_by_model(gateway: GatewayProcess) -> None:
    user = new_user()
    run(add_profile(gateway.database_url, user, allowed_models=frozenset({"gpt-4o-mini"})))
    gateway.client(user).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_requests_total{route="/api/v1/agents/{user_id}/messages/chat/completions",status="200"}' in text
    assert 'gateway_tokens_total{kind="prompt",model="gpt-4o-mini"}' in text
    assert "gateway_upstream_duration_seconds_bucket" in text
    assert user not in text  # no per-user labels


def test_model_names_a_client_makes_up_never_become_labels_or_health_entries(gateway: GatewayProcess) -> None:
    unrestricted = new_user()  # no allow-list: any model name passes to LiteLLM
    run(add_profile(gateway.database_url, unrestricted))
    client = gateway.client(unrestricted)
    invented = [f"made-up-{n}-{uuid.uuid4().hex[:8]}" for n in range(5)]
    for model in invented:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    text = httpx.get(f"{gateway.url}/metrics").text + httpx.get(f"{gateway.url}/health").text
    assert not [model for model in invented if model in text]
    assert 'gateway_tokens_total{kind="prompt",model="other"}' in text


def test_docs_describe_the_agent_routes(gateway: GatewayProcess) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json").json()
    paths = schema["paths"]
    for path in ("", "/chat/completions", "/responses", "/embeddings", "/models"):
        assert f"/api/v1/agents/{{user_id}}/messages{path}" in paths
    for path in (
        "/api/v1/llm/chat/completions",
        "/api/v1/llm/models",
        "/api/v1/me",
        "/api/v1/letta/{path}",
        "/api/v1/ams/{path}",
    ):
        assert path in paths
    assert "/health" in paths and "/api/v1/admin/usage" in paths
    assert httpx.get(f"{gateway.url}/docs").status_code == 200
    assert httpx.get(f"{gateway.url}/redoc").status_code == 200


def test_unknown_routes_are_404_in_the_openai_shape(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/nope", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "No such route.",
        "type": "not_found_error",
        "code": "not_found",
        "param": None,
        "request_id": "req-1",
    }
    assert response.headers["x-request-id"] == "req-1"


def test_admin_usage_needs_the_admin_key_and_sums_the_ledger(gateway_factory: Any) -> None:
    admin_key = "admin-key-for-tests-91c2"
    gw = gateway_factory(ADMIN_API_KEY=admin_key)
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    client = gw.client(user_id)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    run(wait_for_rows(gw.database_url, user_id, 2))
    url = f"{gw.url}/api/v1/admin/usage"

    assert httpx.get(url, params={"user_id": user_id}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    month = datetime.now(UTC).strftime("%Y-%m")
    one = httpx.get(url, params={"user_id": user_id}, headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert one == {
        "user_id": user_id,
        "month": month,
        "requests": 2,
        "prompt_tokens": 22,
        "completion_tokens": 14,
        "total_tokens": 36,
        "estimated_requests": 0,
        "estimated_cost": None,  # no LITELLM_MASTER_KEY: no prices
        "models": [
            {
                "model": "gpt-4o-mini",
                "requests": 2,
                "prompt_tokens": 22,
                "completion_tokens": 14,
                "total_tokens": 36,
                "estimated_cost": None,
            }
        ],
    }
    every = httpx.get(url, headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert any(row["user_id"] == user_id for row in every)
    bad = httpx.get(url, params={"month": "2026-13"}, headers={"Authorization": f"Bearer {admin_key}"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_admin_api_is_off_without_a_key(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/api/v1/admin/usage").status_code == 404


def test_access_log_is_json_with_the_call_fields(gateway: GatewayProcess, user: str) -> None:
    gateway.client(user).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"X-Request-ID": f"log-{user}"}
    )
    run(wait_for_rows(gateway.database_url, user, 1))
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == f"log-{user}"]
    assert len(access) == 1
    line = access[0]
    assert line["status"] == 200 and line["user"] == user and line["model"] == "gpt-4o-mini"
    assert line["tokens"] == 18 and line["upstream"] == "litellm" and line["duration_ms"] > 0


def test_no_secret_or_key_reaches_logs_errors_metrics_or_health(gateway_factory: Any) -> None:
    admin_key = "admin-secret-never-logged-5d1e"
    gw = gateway_factory(ADMIN_API_KEY=admin_key, LOG_LEVEL="DEBUG")
    user_id = new_user()
    user_key = f"{USER_KEY_PREFIX}{user_id}-distinctive"
    run(add_profile(gw.database_url, user_id, litellm_key=user_key))
    bodies: list[str] = []
    client = gw.client(user_id)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True))
    for model in ("key-401", "error-500"):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        bodies.append(caught.value.response.text)
    with pytest.raises(openai.AuthenticationError) as denied:
        gw.client(user_id, api_key=SECRET + "x").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    bodies.append(denied.value.response.text)
    bodies.append(httpx.get(f"{gw.url}/api/v1/admin/usage", headers={"Authorization": f"Bearer {admin_key}x"}).text)
    run(wait_for_rows(gw.database_url, user_id, 3))
    bodies += [httpx.get(f"{gw.url}/metrics").text, httpx.get(f"{gw.url}/health").text]
    gw.terminate()
    everything = "\n".join([*bodies, gw.logs()])

    for secret in (SECRET, user_key, user_key[-12:], admin_key):
        assert secret not in everything


def test_check_reaches_every_dependency_and_fails_on_a_down_one(tmp_path: Any, litellm: Any, redis_url: str) -> None:
    from click.testing import CliRunner

    from agent_gateway.cli import main
    from tests.conftest import free_port

    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/gw.db",
        "LITELLM_BASE_URL": litellm.url,
        "REDIS_URL": redis_url,
        "AGENT_SECRET_KEY": SECRET,
    }
    good = CliRunner().invoke(main, ["check"], env=env)
    assert good.exit_code == 0, good.output
    assert [line.split()[:2] for line in good.output.splitlines()][:3] == [
        ["database", "ok"],
        ["redis", "ok"],
        ["litellm", "ok"],
    ]
    down = CliRunner().invoke(main, ["check"], env={**env, "LITELLM_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.exit_code != 0
    assert "litellm" in down.output and "error" in down.output
    # A database that does not answer, and no agent secret: one line each, no traceback, not 0.
    broken = {**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x", "AGENT_SECRET_KEY": ""}
    result = CliRunner().invoke(main, ["check"], env=broken)
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert lines["database"].split()[1] == "error" and lines["agents"].split()[1] == "missing"
    assert result.output.splitlines()[-1] == "Error: a dependency is not ok; no agent secret"
    assert len(result.output.splitlines()) == len(lines) == 8  # six checks, the secret, the verdict


def test_check_starts_and_probes_letta_ams_and_supabase_when_configured(tmp_path: Any, litellm: Any) -> None:
    from click.testing import CliRunner

    from agent_gateway.cli import main
    from tests.fakes.letta import LETTA_KEY, FakeAMS, FakeLetta
    from tests.fakes.postgrest import running_postgrest

    letta, ams = FakeLetta().start(), FakeAMS().start()
    try:
        with running_postgrest() as supabase:  # no JWKS on this fake: probed, and an error of its own
            env = {
                "DATABASE_URL": f"sqlite:///{tmp_path}/gw.db",
                "LITELLM_BASE_URL": litellm.url,
                "LETTA_BASE_URL": letta.url,
                "LETTA_API_KEY": LETTA_KEY,
                "AMS_BASE_URL": ams.url,
                "SUPABASE_URL": supabase.url,
            }
            result = CliRunner().invoke(main, ["check"], env=env)
    finally:
        letta.stop()
        ams.stop()
    statuses = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.strip()}
    assert statuses["letta"] == "ok" and statuses["ams"] == "ok", result.output
    assert statuses["supabase"] == "error" and "HTTP 404" in result.output  # reached, not "not started"
    assert "AssertionError" not in result.output and result.exit_code != 0
