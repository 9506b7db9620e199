"""Which body fields of an LLM call reach LiteLLM: the OpenAI API's own, per endpoint (SPEC §5.7).

An allow-list, not a deny-list. The fields are those of OpenAI's API reference for each
endpoint (platform.openai.com/docs/api-reference: Chat Completions, Responses, Embeddings),
as of late 2025. A field not listed never reaches LiteLLM: it is dropped, or refused with a
400 when dropping it would silently change the answer or the bill. Those refusals are the
controls LiteLLM itself reads from a request body: they choose another model or deployment
(`fallbacks`, `context_window_fallbacks`, `model_list`, `api_base`…), bypass the call
(`mock_response`), change its price, retries or caching, or configure the router; all of them
are the operator's, set in LiteLLM's config, never a caller's.

`metadata` is OpenAI's own field but LiteLLM reads it for routing, tags and spend logs, so it
is dropped. `user` is always the gateway's (the billed user).
"""

from __future__ import annotations

from typing import Any

from agent_gateway.errors import BadRequest

CHAT = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "verbosity",
        "web_search_options",
    }
)
RESPONSES = frozenset(
    {
        "model",
        "input",
        "instructions",
        "include",
        "max_output_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "prompt_cache_key",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
    }
)
EMBEDDINGS = frozenset({"model", "input", "dimensions", "encoding_format"})
ALLOWED = {"chat": CHAT, "responses": RESPONSES, "embeddings": EMBEDDINGS}

# Refused rather than dropped: what LiteLLM would act on, and what the caller would be surprised to lose.
_REFUSED = frozenset(
    {
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "model_list",
        "router_settings_override",
        "user_config",
        "extra_body",
        "api_key",
        "api_base",
        "api_version",
        "base_url",
        "custom_llm_provider",
        "deployment_id",
        "num_retries",
        "max_retries",
        "timeout",
        "request_timeout",
        "caching",
        "cache",
        "no-cache",
        "guardrails",
        "base_model",
        "model_info",
        "tags",
        # Responses API state kept by the provider: it may be another user's.
        "previous_response_id",
        "conversation",
        "prompt",
    }
)
_REFUSED_PREFIXES = ("litellm_", "mock_")
_REFUSED_PARTS = ("cost_per_",)  # per-request prices: input_cost_per_token…


def check_fields(route: str, payload: dict[str, Any]) -> None:
    """400 for any field LiteLLM would act on that the gateway does not pass (see the module text)."""
    allowed = ALLOWED[route]
    for name in payload:
        if name in allowed:
            continue
        if name in _REFUSED or name.startswith(_REFUSED_PREFIXES) or any(part in name for part in _REFUSED_PARTS):
            raise BadRequest(f"`{name}` is not accepted: it is the gateway operator's to configure.", param=name)
    if payload.get("background") is True:
        # The answer would come later, to a poll the gateway does not see: its usage would go unbilled.
        raise BadRequest("`background` responses are not available through the gateway.", param="background")


def forwarded(route: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The fields that go upstream: the endpoint's own, nulls dropped (agents send `max_completion_tokens: null`)."""
    allowed = ALLOWED[route]
    return {name: value for name, value in payload.items() if name in allowed and value is not None}
