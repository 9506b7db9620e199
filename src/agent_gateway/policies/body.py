from __future__ import annotations

import orjson

from agent_gateway.asgi import BodyDeadline, read_body
from agent_gateway.errors import BadRequest, InvalidJSON
from agent_gateway.llm import fields
from agent_gateway.llm.context import RequestContext
from agent_gateway.policies import Policy

# Completion tokens a request may produce, by the field each API names it with.
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
MAX_MODEL_NAME = 256
# Far past any model's window, and small enough that a reservation (count × n) fits the ledger's BIGINT.
MAX_COUNT = 2**31 - 1


class BodyPolicy(Policy):
    """Reads the body (413 past `max_bytes`, 408 past its deadline), checks it is a JSON object with a string `model`,
    for chat non-empty `messages`, and no field the gateway refuses (400, `llm/fields.py`). Sets
    `model`, `stream`, `prompt_estimate` and `reserve_tokens` (the call's worst case) on the context."""

    summary = "a JSON body with `model` (400, 413)"

    def __init__(self, max_bytes: int, default_reserve_tokens: int, deadline: BodyDeadline) -> None:
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.default_reserve_tokens = default_reserve_tokens

    async def check(self, ctx: RequestContext) -> None:
        body = await read_body(ctx.receive, self.max_bytes, ctx.header(b"content-length"), self.deadline)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidJSON() from None
        if not isinstance(payload, dict):
            raise InvalidJSON()
        model = payload.get("model")
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME or "\x00" in model:
            # The ledger keeps the name (256 characters, no NUL): a row it cannot take would block the rest.
            raise BadRequest(f"`model` must be a string of 1-{MAX_MODEL_NAME} characters.", param="model")
        if ctx.route == "chat":
            messages = payload.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("`messages` must be a non-empty list.", param="messages")
        fields.check_fields(ctx.route, payload)
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            # Upstream may stream on any truthy value while the gateway would read a JSON answer.
            raise BadRequest("`stream` must be true or false.", param="stream")
        ctx.payload = payload
        ctx.model = model
        ctx.stream = stream is True
        # SPEC §4: an estimate is a quarter of the prompt's bytes; no tokenizer download.
        ctx.prompt_estimate = len(body) // 4
        ctx.reserve_tokens = ctx.prompt_estimate + self._completion_allowance(ctx.route, payload)

    def _completion_allowance(self, route: str, payload: dict[str, object]) -> int:
        """The most the answer may cost: the largest token cap named (LiteLLM may honour any of
        them), or the default; times the choices asked for."""
        if route == "embeddings":  # embeddings cost their prompt only
            return 0
        caps = [cap for name in _MAX_TOKEN_FIELDS if (cap := _count(payload, name)) is not None]
        per_choice = max(caps) if caps else self.default_reserve_tokens
        choices = max(_count(payload, "n") or 1, _count(payload, "best_of") or 1)
        return per_choice * choices


def _count(payload: dict[str, object], name: str) -> int | None:
    """The field's count, or None when absent or null. Anything but a non-negative integer is a 400:
    upstream may read "50000" or 5e4 as a count the reservation would not have held."""
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise BadRequest(f"`{name}` must be an integer from 0 to {MAX_COUNT}.", param=name)
    return value
