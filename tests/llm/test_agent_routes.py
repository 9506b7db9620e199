"""The agent LLM routes end to end: the openai SDK → the gateway process → the fake LiteLLM."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import SECRET, TOKEN_KEY, USER_KEY_PREFIX, GatewayProcess, add_profile, new_user, run, wait_for_rows
from tests.fakes.litellm import USAGE, FakeLiteLLM

# Bodies real Letta servers sent to an agent's endpoint (tests/conformance/capture.py).
FIXTURES = Path(__file__).parent.parent / "fixtures" / "letta"


def letta_body(name: str = "0.16.8/chat.json") -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def test_letta_chat_body_reaches_litellm_with_the_users_key(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str
) -> None:
    body = letta_body()
    body["model"] = "gpt-4o-mini"
    client = gateway.client(user)
    completion = client.chat.completions.create(**body)

    assert completion.choices[0].message.content == "Hello!"
    assert completion.usage is not None and completion.usage.total_tokens == USAGE["total_tokens"]
    seen = litellm.for_user(user)[-1]
    assert seen.path == "/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {USER_KEY_PREFIX}{user}"
    assert seen.headers["X-User-ID"] == user
    assert seen.headers["Accept-Encoding"] == "identity"
    assert not any(name.lower().startswith("x-stainless") for name in seen.headers)
    assert seen.body is not None
    assert seen.body["user"] == user  # Letta's own actor id is replaced by the billed user
    assert "max_completion_tokens" not in seen.body  # top-level nulls are dropped
    assert seen.body["tools"] == body["tools"] and seen.body["tool_choice"] == body["tool_choice"]
    assert seen.body["parallel_tool_calls"] is False


def test_every_call_leaves_one_settled_ledger_row_with_the_upstream_usage(gateway: GatewayProcess, user: str) -> None:
    client = gateway.client(user)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    rows = run(wait_for_rows(gateway.database_url, user, 1))
    assert len(rows) == 1
    row = rows[0]
    assert (row["state"], row["status"], row["route"], row["model"]) == ("settled", 200, "chat", "gpt-4o-mini")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (11, 7, 18)
    assert not row["estimated"]


async def test_async_client_and_the_base_path_form(gateway: GatewayProcess, user: str) -> None:
    client = gateway.async_client(user)
    completion = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert completion.usage is not None and completion.usage.prompt_tokens == 11

    # The documented direct form: POST on the base itself.
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.agent_base(user),
            headers={"Authorization": f"Bearer {SECRET}"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == 18


def test_letta_stream_arrives_with_usage_and_is_metered(gateway: GatewayProcess, user: str) -> None:
    body = letta_body("0.16.8/chat_stream.json")
    body["model"] = "gpt-4o-mini"
    stream = gateway.client(user).chat.completions.create(**body)
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.total_tokens == 16
    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert (row["total_tokens"], row["estimated"]) == (16, False)


def test_stream_without_include_usage_gets_no_usage_chunk_but_is_billed(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str
) -> None:
    stream = gateway.client(user).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)

    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)  # the forced usage-only chunk was taken out
    seen = litellm.for_user(user)[-1]
    assert seen.body is not None and seen.body["stream_options"] == {"include_usage": True}
    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 5, False)


def test_stream_chunks_reach_the_client_while_upstream_holds_the_rest(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str
) -> None:
    litellm.reset()
    stream = gateway.client(user, timeout=10).chat.completions.create(
        model="stall", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    first_at: list[float] = []
    released_at: list[float] = []

    def release_later() -> None:
        time.sleep(1.0)
        released_at.append(time.monotonic())
        litellm.release()

    threading.Thread(target=release_later, daemon=True).start()
    chunks = []
    for chunk in stream:
        if not first_at:
            first_at.append(time.monotonic())
        chunks.append(chunk)

    assert chunks[0].choices[0].delta.content == "Hel"
    assert released_at and first_at[0] < released_at[0]  # not buffered until the stream ended
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from fake"


def test_streams_carry_sse_headers(gateway: GatewayProcess, user: str) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        body = response.read()
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert body.rstrip().endswith(b"data: [DONE]")


def test_wrong_secret_is_401_before_any_upstream_call(gateway: GatewayProcess, litellm: FakeLiteLLM, user: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client(user, api_key="not-the-secret").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 401
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert error["request_id"] == caught.value.response.headers["x-request-id"]
    assert litellm.for_user(user) == []


def test_no_authorization_is_401(gateway: GatewayProcess, user: str) -> None:
    response = httpx.post(f"{gateway.agent_base(user)}/chat/completions", json={"model": "m", "messages": [1]})
    assert response.status_code == 401


def test_derived_token_opens_its_own_user_only(gateway: GatewayProcess) -> None:
    from agent_gateway.auth.agent_tokens import derive_token

    alice, bob = new_user(), new_user()
    for user_id in (alice, bob):
        run(add_profile(gateway.database_url, user_id))
    for version in (0, 1):  # the first format (agt1) and the versioned one (agt2)
        token = derive_token(TOKEN_KEY.encode(), alice, version)
        completion = gateway.client(alice, api_key=token).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.usage is not None
        with pytest.raises(openai.AuthenticationError):
            gateway.client(bob, api_key=token).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    # Whoever knows the shared agent secret cannot mint a user's token with it.
    forged = derive_token(SECRET.encode(), alice, 1)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(alice, api_key=forged).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


def test_tokens_only_refuses_the_bare_secret(gateway_factory: Any) -> None:
    from agent_gateway.auth.agent_tokens import derive_token

    rotated = "older-token-key-still-valid"
    gw = gateway_factory(AGENT_TOKENS_ONLY="true", AGENT_TOKEN_KEY=f"{TOKEN_KEY},{rotated}")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    with pytest.raises(openai.AuthenticationError):
        gw.client(user_id).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    for key in (TOKEN_KEY, rotated):  # a token under any listed key is accepted
        client = gw.client(user_id, api_key=derive_token(key.encode(), user_id, 1))
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).usage


def test_one_users_tokens_are_revoked_without_touching_anyone_elses(gateway_factory: Any, redis_url: str) -> None:
    from click.testing import CliRunner

    from agent_gateway.cli import main

    gw = gateway_factory(REDIS_URL=redis_url)  # told at once of the revocation
    alice, bob = new_user(), new_user()
    env = {"DATABASE_URL": gw.database_url, "AGENT_TOKEN_KEY": TOKEN_KEY, "REDIS_URL": redis_url}
    tokens = {}
    for user_id in (alice, bob):
        run(add_profile(gw.database_url, user_id))
        tokens[user_id] = CliRunner().invoke(main, ["token", user_id], env=env).stdout.strip()
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    assert gw.client(alice, api_key=tokens[alice]).chat.completions.create(**chat).usage
    renewed = CliRunner().invoke(main, ["token", alice, "--revoke"], env=env).stdout.strip()
    with pytest.raises(openai.AuthenticationError):
        gw.client(alice, api_key=tokens[alice]).chat.completions.create(**chat)
    assert gw.client(alice, api_key=renewed).chat.completions.create(**chat).usage
    assert gw.client(bob, api_key=tokens[bob]).chat.completions.create(**chat).usage


def test_the_agent_secret_is_refused_outside_the_allowed_networks(gateway_factory: Any) -> None:
    from agent_gateway.auth.agent_tokens import derive_token

    gw = gateway_factory(AGENT_ALLOWED_NETWORKS="10.0.0.0/8", TRUSTED_PROXIES="127.0.0.1/32")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    url, body = (
        f"{gw.agent_base(user_id)}/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    bare = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.post(url, headers=bare, json=body).status_code == 401  # from 127.0.0.1 itself
    assert httpx.post(url, headers={**bare, "X-Forwarded-For": "203.0.113.9"}, json=body).status_code == 401
    assert httpx.post(url, headers={**bare, "X-Forwarded-For": "203.0.113.9, 10.1.2.3"}, json=body).status_code == 200
    # A client's own line first, the proxy's appended as a second line: the proxy's is the one that counts.
    lines = [*bare.items(), ("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-For", "203.0.113.9")]
    assert httpx.post(url, headers=lines, json=body).status_code == 401
    token = {"Authorization": f"Bearer {derive_token(TOKEN_KEY.encode(), user_id, 1)}"}
    assert httpx.post(url, headers=token, json=body).status_code == 200  # a user's own token opens from anywhere


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
        (b'{"model": "gpt-4o-mini"}', "messages"),
        # LiteLLM streams on any truthy `stream`; the gateway would have read a JSON answer (a fuzz find)
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": {"a": 1}}', "stream"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "true"}', "stream"),
        # What the ledger could not store (a fault-injection find: one such row blocked every later write)
        (b'{"model": "' + b"m" * 257 + b'", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt\\u0000", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9223372036854775808}',
            "max_tokens",
        ),
    ],
)
def test_malformed_bodies_are_400_and_never_forwarded(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str, body: bytes, param: str | None
) -> None:
    response = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert litellm.for_user(user) == []
    assert run(wait_for_rows(gateway.database_url, user, 0)) == []


def test_malformed_user_id_is_400(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/api/v1/agents/bad.user/messages/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "user_id"


def test_body_over_the_cap_is_413(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    gw = gateway_factory(MAX_BODY_BYTES="2048")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(user_id).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 4096}]
        )
    assert caught.value.status_code == 413
    assert caught.value.response.json()["error"]["code"] == "body_too_large"
    assert litellm.for_user(user_id) == []


def test_unknown_user_is_403_user_not_found(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gateway.client(new_user()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.response.json()["error"]["code"] == "user_not_found"


def test_model_outside_the_allow_list_is_403(gateway: GatewayProcess, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    run(add_profile(gateway.database_url, user_id, allowed_models=frozenset({"gpt-4o-mini"})))
    client = gateway.client(user_id)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    error = caught.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_allowed", "model")
    assert litellm.for_user(user_id) == []
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).usage


def test_models_are_filtered_to_the_allow_list(gateway: GatewayProcess) -> None:
    user_id = new_user()
    run(add_profile(gateway.database_url, user_id, allowed_models=frozenset({"gpt-4o-mini", "claude-3-5-sonnet"})))
    models = [model.id for model in gateway.client(user_id).models.list()]
    assert sorted(models) == ["claude-3-5-sonnet", "gpt-4o-mini"]


def test_request_rate_limit_is_429_with_ratelimit_headers(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    gw = gateway_factory(RATE_LIMIT_AGENT="3/minute")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    client = gw.client(user_id)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert raw.headers["ratelimit-policy"] == '"agent";q=3;w=60'
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    response = caught.value.response
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert int(response.headers["retry-after-ms"]) > 0
    assert response.headers["ratelimit"].startswith('"agent";r=0;')
    assert len(litellm.for_user(user_id)) == 3


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 429, 400])
def test_upstream_errors_pass_through_unchanged(gateway: GatewayProcess, user: str, status: int, stream: bool) -> None:
    """Streamed or not: an upstream error is an error answer, whole, not an SSE stream."""
    response = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": f"error-{status}", "messages": [{"role": "user", "content": "x"}], "stream": stream},
    )
    assert response.headers["content-type"].startswith("application/json")
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"litellm.Error: mock {status}"
    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert (row["status"], row["total_tokens"], row["state"]) == (status, 0, "settled")


def test_upstream_key_rejection_is_a_scrubbed_403(gateway: GatewayProcess, user: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gateway.client(user).chat.completions.create(model="key-401", messages=[{"role": "user", "content": "x"}])
    text = caught.value.response.text
    assert caught.value.response.json()["error"]["code"] == "upstream_key_rejected"
    assert user[-4:] not in text and "sk-" not in text


def test_usage_nulls_are_scrubbed_and_missing_usage_becomes_zeros(gateway: GatewayProcess, user: str) -> None:
    http_headers = {"Authorization": f"Bearer {SECRET}"}
    url = f"{gateway.agent_base(user)}/chat/completions"
    message = [{"role": "user", "content": "x"}]
    scrubbed = httpx.post(url, headers=http_headers, json={"model": "null-details", "messages": message}).json()
    assert scrubbed["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert "completion_tokens_details" not in scrubbed["usage"]

    missing = httpx.post(url, headers=http_headers, json={"model": "no-usage", "messages": message}).json()
    assert missing["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    rows = run(wait_for_rows(gateway.database_url, user, 2))
    estimated = [row for row in rows if row["model"] == "no-usage"][0]
    assert estimated["estimated"] and estimated["total_tokens"] > 0


def test_upstream_headers_are_allow_listed(gateway: GatewayProcess, user: str) -> None:
    response = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200
    for name in ("set-cookie", "access-control-allow-origin", "x-litellm-model-api-base"):
        assert name not in response.headers


def test_client_steering_keys_and_headers_do_not_reach_litellm(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"tags": ["x"]},  # LiteLLM reads it: dropped
        "some_sdk_extra": 1,  # not OpenAI's: dropped
    }
    response = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers=[
            ("Authorization", f"Bearer {SECRET}"),
            ("x-litellm-api-key", "sk-other"),
            ("Cookie", "a=b"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("Content-Type", "application/json"),
            ("Content-Type", "text/plain"),  # a second one must not replace what the gateway read
        ],
        content=json.dumps(body),
    )
    assert response.status_code == 200
    seen = litellm.for_user(user)[-1]
    assert [value for name, value in seen.raw_headers if name.lower() == "content-type"] == ["application/json"]
    assert seen.body is not None
    assert set(seen.body) == {"model", "messages", "user"}
    assert "x-litellm-api-key" not in {name.lower() for name in seen.headers}
    assert "Cookie" not in seen.headers
    assert seen.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("/chat/completions", "api_key", "sk-someone-else"),
        ("/chat/completions", "api_base", "http://evil.example"),
        ("/chat/completions", "mock_response", "free"),
        ("/chat/completions", "fallbacks", ["gpt-4o"]),
        ("/chat/completions", "context_window_fallbacks", [{"gpt-4o-mini": ["gpt-4o"]}]),
        ("/chat/completions", "router_settings_override", {"fallbacks": []}),
        ("/chat/completions", "user_config", {"model_list": []}),
        ("/chat/completions", "extra_body", {"api_base": "x"}),
        ("/chat/completions", "input_cost_per_token", 0),
        ("/chat/completions", "litellm_logging_obj", {}),
        ("/responses", "previous_response_id", "resp_of_someone_else"),
        ("/responses", "background", True),
        # Counts the reservation could not read, which upstream may still honour.
        ("/chat/completions", "max_tokens", 50000.0),
        ("/chat/completions", "max_completion_tokens", "50000"),
        ("/chat/completions", "n", 2.0),
        ("/responses", "max_output_tokens", 1e5),
        ("/chat/completions", "max_tokens", -1),
        ("/chat/completions", "max_tokens", True),
    ],
)
def test_fields_that_steer_litellm_are_refused_before_any_call(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str, route: str, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", field: value}
    body.update({"messages": [{"role": "user", "content": "x"}]} if route != "/responses" else {"input": "x"})
    before = len(litellm.for_user(user))
    refused = httpx.post(f"{gateway.agent_base(user)}{route}", headers={"Authorization": f"Bearer {SECRET}"}, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    assert len(litellm.for_user(user)) == before


def test_the_reservation_is_the_largest_token_cap_times_the_choices(gateway_factory: Any) -> None:
    gw = gateway_factory()
    user_id = new_user()
    run(add_profile(gw.database_url, user_id, monthly_limit=10_000))
    url = f"{gw.agent_base(user_id)}/responses"
    auth = {"Authorization": f"Bearer {SECRET}"}
    # `max_tokens: 1` beside `max_output_tokens: 200000`: the call may still write 200,000 tokens.
    both = httpx.post(
        url, headers=auth, json={"model": "gpt-4o-mini", "input": "x", "max_tokens": 1, "max_output_tokens": 200_000}
    )
    assert both.status_code == 429 and both.json()["error"]["code"] == "insufficient_quota"
    chat = f"{gw.agent_base(user_id)}/chat/completions"
    many = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3000, "n": 4}
    assert httpx.post(chat, headers=auth, json=many).status_code == 429  # 4 choices of 3,000
    assert httpx.post(chat, headers=auth, json={**many, "n": 3}).status_code == 200


def test_request_id_is_echoed_and_sent_upstream(gateway: GatewayProcess, litellm: FakeLiteLLM, user: str) -> None:
    url = f"{gateway.agent_base(user)}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(url, headers={"Authorization": f"Bearer {SECRET}", "X-Request-ID": "agent-run-42"}, json=body)
    assert response.headers["x-request-id"] == "agent-run-42"
    assert litellm.for_user(user)[-1].headers["X-Request-ID"] == "agent-run-42"

    bad = httpx.post(url, headers={"Authorization": f"Bearer {SECRET}", "X-Request-ID": "no spaces <>"}, json=body)
    assert bad.headers["x-request-id"] != "no spaces <>" and len(bad.headers["x-request-id"]) == 32


def test_responses_and_embeddings_are_metered(gateway: GatewayProcess, user: str) -> None:
    client = gateway.client(user)
    response = client.responses.create(model="gpt-4o-mini", input="hi")
    assert response.usage is not None and response.usage.total_tokens == 22
    stream_events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert stream_events[-1].type == "response.completed"
    embedding = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]

    rows = sorted(run(wait_for_rows(gateway.database_url, user, 3)), key=lambda row: row["admitted_at"])
    assert [(row["route"], row["total_tokens"], row["estimated"]) for row in rows] == [
        ("responses", 22, False),
        ("responses", 22, False),
        ("embeddings", 6, False),
    ]
    assert rows[0]["cached_tokens"] == 2


def test_wrong_method_and_unknown_route(gateway: GatewayProcess, user: str) -> None:
    wrong = httpx.get(f"{gateway.agent_base(user)}/chat/completions", headers={"Authorization": f"Bearer {SECRET}"})
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    missing = httpx.post(f"{gateway.agent_base(user)}/completions", headers={"Authorization": f"Bearer {SECRET}"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("name", sorted(str(path.relative_to(FIXTURES)) for path in FIXTURES.glob("*/*.json")))
def test_letta_bodies_are_unchanged_by_the_gateway_and_metered(
    gateway: GatewayProcess, litellm: FakeLiteLLM, user: str, name: str
) -> None:
    """Apart from the documented rewrites, LiteLLM sees exactly what Letta sent, and bills it exactly."""
    body = letta_body(name)
    route = "responses" if "responses" in name else "chat"  # the ledger's name for it
    body["model"] = "gpt-5-mini" if route == "responses" else "gpt-4o-mini"
    answer = httpx.post(
        gateway.agent_base(user) + ("/responses" if route == "responses" else "/chat/completions"),
        headers={"Authorization": f"Bearer {SECRET}"},
        json=copy.deepcopy(body),
    )
    assert answer.status_code == 200
    seen = litellm.for_user(user)[-1].body
    expected = {k: v for k, v in body.items() if v is not None}
    expected["user"] = user  # Letta's own actor id is replaced by the billed user
    assert seen == expected
    streamed = body.get("stream") is True
    total = 22 if route == "responses" else 16 if streamed else USAGE["total_tokens"]
    row = run(wait_for_rows(gateway.database_url, user, 1))[0]
    assert (row["route"], row["total_tokens"], row["estimated"]) == (route, total, False)
