"""What of an agent's request goes upstream, and in what form (SPEC §5 step 7)."""

from __future__ import annotations

from typing import Any

import orjson

from agent_gateway.context import RequestContext

# Body keys that would let a caller steer LiteLLM itself: its key, its target, its mocks.
_STEERING = frozenset({"api_key", "api_base", "base_url", "mock_response", "fallbacks", "metadata"})
# Request headers passed on; everything else of the client's stays behind.
_FORWARDED_HEADERS = (b"content-type", b"accept", b"traceparent", b"tracestate")


def upstream_body(ctx: RequestContext) -> tuple[bytes, bool]:
    """The body to send and whether the client itself asked for a stream's usage chunk."""
    body: dict[str, Any] = {
        key: value
        for key, value in ctx.payload.items()
        if value is not None and key not in _STEERING and not key.startswith("litellm_")
    }
    body["user"] = ctx.user_id
    client_wants_usage = True
    if ctx.stream and ctx.route == "chat":
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        client_wants_usage = options.get("include_usage") is True
        options["include_usage"] = True  # the ledger needs the real usage of every stream
        body["stream_options"] = options
    return orjson.dumps(body), client_wants_usage


def upstream_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {name.decode(): value.decode("latin-1") for name, value in ctx.headers if name in _FORWARDED_HEADERS}
    headers["Authorization"] = f"Bearer {ctx.key}"
    headers["X-User-ID"] = ctx.user_id
    headers["X-Request-ID"] = ctx.request_id
    headers["Accept-Encoding"] = "identity"
    return headers
