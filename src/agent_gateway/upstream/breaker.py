"""Circuit breakers per upstream service (and per model for LiteLLM), SPEC §6.

closed ──(N consecutive failures)──▶ open ──(cool-down)──▶ half-open ──(probe ok)──▶ closed
                                       ▲                                  │
                                       └──────────(probe fails)───────────┘

Only the upstream's own trouble counts: connection errors, timeouts, and 502/503/504 with
no upstream error body. A user's bad key or any 4xx never opens a breaker, and neither can
one user alone: a failure that came with a user's request (a timeout, a bodiless 5xx: their
turn may just be slow or heavy) opens it only once failures in a row came from two users or
more; a failure to connect is the service's own and counts for everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent_gateway.errors import CircuitOpen
from agent_gateway.ops import metrics

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_BREAKERS = 256


@dataclass
class CircuitBreaker:
    name: str
    threshold: int = 5
    cool_down: float = 30.0
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    service_fault: bool = False  # the streak holds a failure to connect
    users: set[str] = field(default_factory=set)  # whose requests failed in the streak (two are enough)

    @property
    def tripped(self) -> bool:
        return self.failures >= self.threshold and (self.service_fault or len(self.users) >= 2)

    @property
    def state(self) -> str:
        if not self.tripped:
            return CLOSED
        return HALF_OPEN if time.monotonic() - self.opened_at >= self.cool_down else OPEN

    def before_call(self) -> bool:
        """Raise `CircuitOpen` while open; in half-open let one probe through at a time (True: this call)."""
        state = self.state
        if state == CLOSED:
            return False
        if state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        error = CircuitOpen(f"{self.name} is failing; requests are paused.")
        retry = max(1, int(self.cool_down - (time.monotonic() - self.opened_at) + 0.999))
        error.headers["Retry-After"] = str(retry)
        raise error

    def succeeded(self) -> None:
        if self.tripped:
            metrics.BREAKER_STATE.labels(upstream=self.name).set(0)
        self.failures = 0
        self.probing = False
        self.service_fault = False
        self.users.clear()

    def failed(self, user: str | None = None) -> None:
        """One more failure in a row: of the service itself (`user` None), or on `user`'s request."""
        self.failures += 1
        self.probing = False
        if user is None:
            self.service_fault = True
        elif len(self.users) < 2:
            self.users.add(user)
        if self.tripped:
            self.opened_at = time.monotonic()  # a failed probe restarts the cool-down
            metrics.BREAKER_STATE.labels(upstream=self.name).set(1)

    def release_probe(self) -> None:
        """The call ended with neither verdict (the client left): let another probe try."""
        self.probing = False


def counts_as_failure(status: int, has_error_body: bool) -> bool:
    return status in (502, 503, 504) and not has_error_body


class Breakers:
    """One breaker per key (`letta`, `ams`, `litellm:<model>`), made on first use."""

    def __init__(self, threshold: int = 5, cool_down: float = 30.0) -> None:
        self.threshold = threshold
        self.cool_down = cool_down
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            if len(self._breakers) >= MAX_BREAKERS:  # model names come from clients: bound them
                name = name.split(":", 1)[0] + ":(other)"
                return self._breakers.setdefault(name, CircuitBreaker(name, self.threshold, self.cool_down))
            breaker = self._breakers[name] = CircuitBreaker(name, self.threshold, self.cool_down)
        return breaker

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in sorted(self._breakers.items())}
