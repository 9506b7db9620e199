"""What reaches the real LiteLLM proxy: its own routing controls in a request body would pick
another model (and bill the call as the one asked for); through the gateway they never arrive."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conformance.servers import LiteLLMProxy
from tests.conftest import SECRET, GatewayProcess, add_profile, new_user, run, wait_for_rows

pytestmark = [pytest.mark.conformance, pytest.mark.xdist_group("letta")]

STEERING: list[dict[str, Any]] = [
    {"fallbacks": ["gpt-4o-fallback-target"]},
    {"context_window_fallbacks": [{"mock-server-error": ["gpt-4o-fallback-target"]}]},
    {"router_settings_override": {"fallbacks": [{"mock-server-error": ["gpt-4o-fallback-target"]}]}},
]


@pytest.fixture(scope="module")
def gateway(litellm_proxy: LiteLLMProxy, launch_gateway: Any) -> GatewayProcess:
    gateway: GatewayProcess = launch_gateway(LITELLM_BASE_URL=litellm_proxy.url)
    return gateway


@pytest.mark.parametrize("steering", STEERING, ids=lambda steering: next(iter(steering)))
def test_fallbacks_in_a_body_never_reach_litellm(
    gateway: GatewayProcess, litellm_proxy: LiteLLMProxy, steering: dict[str, Any]
) -> None:
    user = new_user()
    run(add_profile(gateway.database_url, user, litellm_key=f"sk-{user}"))
    body = {"model": "mock-server-error", "messages": [{"role": "user", "content": "hi"}], **steering}
    direct = httpx.post(
        f"{litellm_proxy.url}/chat/completions", headers={"Authorization": f"Bearer sk-{user}"}, json=body, timeout=60
    )
    if next(iter(steering)) == "fallbacks":  # the attack, shown on LiteLLM itself
        assert direct.status_code == 200 and "fallback target" in direct.text
    through = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json=body,
        timeout=60,
    )
    assert through.status_code == 400 and through.json()["error"]["param"] == next(iter(steering))
    allowed = httpx.post(
        f"{gateway.agent_base(user)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert allowed.status_code == 200 and "fallback" not in allowed.text
    rows = run(wait_for_rows(gateway.database_url, user, 1))
    assert [row["model"] for row in rows] == ["gpt-4o"]  # the refused call was never admitted
