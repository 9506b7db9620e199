from __future__ import annotations

import orjson

from agent_gateway.asgi import read_body
from agent_gateway.context import RequestContext
from agent_gateway.errors import BadRequest, InvalidJSON

# Completion tokens a request may produce, by the field each API names it with.
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class BodyPolicy:
    """Reads the body (413 past `max_bytes`), checks it is a JSON object with a string `model`
    and, for chat, non-empty `messages` (400). Sets `model`, `stream`, `prompt_estimate` and
    `reserve_tokens` (the call's worst case) on the context."""

    def __init__(self, max_bytes: int, default_reserve_tokens: int) -> None:
        self.max_bytes = max_bytes
        self.default_reserve_tokens = default_reserve_tokens

    async def check(self, ctx: RequestContext) -> None:
        ctx.body = await read_body(ctx.receive, self.max_bytes, ctx.header(b"content-length"))
        try:
            payload = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            raise InvalidJSON() from None
        if not isinstance(payload, dict):
            raise InvalidJSON()
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("`model` must be a non-empty string.", param="model")
        if ctx.route == "chat":
            messages = payload.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("`messages` must be a non-empty list.", param="messages")
        ctx.payload = payload
        ctx.model = model
        ctx.stream = payload.get("stream") is True
        # SPEC §4: an estimate is a quarter of the prompt's bytes; no tokenizer download.
        ctx.prompt_estimate = len(ctx.body) // 4
        ctx.reserve_tokens = ctx.prompt_estimate + self._completion_allowance(ctx.route, payload)

    def _completion_allowance(self, route: str, payload: dict[str, object]) -> int:
        if route == "embeddings":  # embeddings cost their prompt only
            return 0
        limit = next((payload[name] for name in _MAX_TOKEN_FIELDS if isinstance(payload.get(name), int)), None)
        per_choice = limit if isinstance(limit, int) and limit >= 0 else self.default_reserve_tokens
        choices = payload.get("n")
        return per_choice * (choices if isinstance(choices, int) and choices > 0 else 1)
