"""The admission chain: small policies run in order; any one stops a request by raising.

A policy reads and enriches the `RequestContext`; it raises a `GatewayError` to refuse. A policy
that holds something for the call (a budget reservation) registers a settle hook on the context
so the relay can give it back with the real usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent_gateway.context import RequestContext


class Policy(Protocol):
    async def check(self, ctx: RequestContext) -> None: ...


async def run_policies(policies: Sequence[Policy], ctx: RequestContext) -> None:
    for policy in policies:
        await policy.check(ctx)
