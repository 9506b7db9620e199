"""Per-request state shared by the policies, the relay and the access log."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_gateway.stores.ledger import LedgerEntry, Usage
from agent_gateway.stores.profiles import Profile
from agent_gateway.types import Headers, Receive


@dataclass(slots=True)
class RequestContext:
    request_id: str
    route: str  # the route template's short name: chat, responses, embeddings, models
    user_id: str
    headers: Headers
    receive: Receive
    started: float = field(default_factory=time.perf_counter)
    call_id: str = field(default_factory=lambda: os.urandom(12).hex())  # the ledger row's key
    admitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    body: bytes = b""
    payload: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    profile: Profile | None = None
    token: str | None = None  # a frontend user's own access token, passed on to AMS
    prompt_estimate: int = 0
    reserve_tokens: int = 0  # worst case of this call, held by the budget until it settles
    response_headers: Headers = field(default_factory=list)
    entry: LedgerEntry | None = None
    # What policies hold for the call (a budget reservation), given back with the real usage.
    settle_hooks: list[Callable[[Usage], Awaitable[None]]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def month(self) -> str:
        return self.admitted_at.strftime("%Y-%m")

    @property
    def key(self) -> str:
        assert self.profile is not None, "ProfilePolicy runs before anything needs the key"
        return self.profile.litellm_key
