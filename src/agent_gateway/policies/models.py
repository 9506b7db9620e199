from __future__ import annotations

from agent_gateway.context import RequestContext
from agent_gateway.errors import ModelNotAllowed


class ModelAllowListPolicy:
    """The requested model is in the profile's `allowed_models` (when set), else 403."""

    async def check(self, ctx: RequestContext) -> None:
        assert ctx.profile is not None and ctx.model is not None
        if not ctx.profile.allows(ctx.model):
            raise ModelNotAllowed(f"Model {ctx.model!r} is not allowed for this user.", param="model")
