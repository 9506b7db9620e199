"""Per-request state shared by the policies, the relay and the access log."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_gateway.domain import Profile, Usage, month_of
from agent_gateway.limits.budget import BudgetRequest
from agent_gateway.stores.ledger import LedgerEntry
from agent_gateway.types import Headers, Receive
from agent_gateway.upstream.breaker import CircuitBreaker


@dataclass(slots=True)
class RequestContext:
    request_id: str
    route: str  # the route template's short name: chat, responses, embeddings, models
    user_id: str
    headers: Headers
    receive: Receive
    peer: str | None = None  # the connection's remote address
    started: float = field(default_factory=time.perf_counter)
    call_id: str = field(default_factory=lambda: os.urandom(12).hex())  # the ledger row's key
    admitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    payload: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    model_label: str = "other"  # the model as metrics and breakers name it: never a client's free choice
    stream: bool = False
    profile: Profile | None = None
    token: str | None = None  # a frontend user's own access token, passed on to AMS
    prompt_estimate: int = 0
    reserve_tokens: int = 0  # worst case of this call, held by the budget until it settles
    response_headers: Headers = field(default_factory=list)
    entry: LedgerEntry | None = None
    reservation: BudgetRequest | None = None  # what the budget holds for the call until it settles
    breaker: CircuitBreaker | None = None  # the model's
    probe: bool = False  # the call is its half-open breaker's one probe
    in_flight: bool = False  # the call holds one of its user's concurrency slots
    usage: Usage | None = None  # what the call cost, once settled: policies release against it

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_list(self, name: bytes) -> bytes | None:
        """Every line of a list-valued header joined in order, as RFC 9110 §5.3 reads repeated lines."""
        values = [value for key, value in self.headers if key == name]
        return b",".join(values) if values else None

    @property
    def month(self) -> str:
        return month_of(self.admitted_at)

    @property
    def key(self) -> str:
        assert self.profile is not None, "ProfilePolicy runs before anything needs the key"
        return self.profile.litellm_key
