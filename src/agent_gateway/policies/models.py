from __future__ import annotations

from agent_gateway.errors import ModelNotAllowed
from agent_gateway.llm.context import RequestContext
from agent_gateway.ops.metrics import MODEL_LABELS
from agent_gateway.policies import Policy


class ModelAllowListPolicy(Policy):
    """The requested model is in the profile's `allowed_models` (when set), else 403; names the
    model's label for metrics and breakers (`other` unless some allow-list names it)."""

    summary = "the model allow-list (403 `model_not_allowed`)"

    async def check(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None and ctx.model is not None
        if not ctx.profile.allows(ctx.model):
            raise ModelNotAllowed(f"Model {ctx.model!r} is not allowed for this user.", param="model")
        ctx.model_label = MODEL_LABELS.label(ctx.model)
