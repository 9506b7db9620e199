"""What of an agent's request goes upstream, and in what form (SPEC §5 step 7)."""

from __future__ import annotations

from typing import Any

import orjson

from agent_gateway import headers
from agent_gateway.llm import fields
from agent_gateway.llm.context import RequestContext


def upstream_body(ctx: RequestContext) -> tuple[bytes, bool]:
    """The body to send and whether the client itself asked for a stream's usage chunk."""
    body: dict[str, Any] = fields.forwarded(ctx.route, ctx.payload)
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
    forwarded = headers.as_user(
        headers.from_client(ctx.headers, headers.CLIENT_TO_LLM), ctx.key, ctx.user_id, ctx.request_id
    )
    forwarded["Content-Type"] = "application/json"
    forwarded["Accept-Encoding"] = "identity"
    return forwarded
