"""Redis for the limits: the client, and what happens when it fails (SPEC §5.5-6).

When Redis cannot answer, `LIMITS_FAIL_MODE=open` goes on without it (each limit falls back
to its own way, counted in a metric and logged once a minute), `closed` refuses with 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as ConnectionLost

from agent_gateway.errors import LimitsUnavailable
from agent_gateway.ops import metrics
from agent_gateway.settings import Settings

log = logging.getLogger("agent_gateway.limits")
FailMode = Literal["open", "closed"]
_CONNECT_TIMEOUT = 1.0
PAUSE_AFTER, PAUSE_SECONDS = 5, 1.0
T = TypeVar("T")


def connect_redis(settings: Settings, timeout: float | None, **options: Any) -> Redis | None:
    """A client for `REDIS_URL` whose calls give up after `timeout` seconds (None: never).

    Its pool holds a connection for every request the instance may have in flight, and a call
    finding none free waits for one (within `timeout`) instead of failing: redis-py's default
    pool of 100 raised past 100 calls at once, and each such call fell back to per-process limits.
    """
    if not settings.redis_url:
        return None
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_concurrent_requests,
        timeout=timeout,
        password=password,
        socket_timeout=timeout,
        # Connecting happens in bursts (a cold pool under load), when the event loop is busiest:
        # it gets longer than a command, which a hung Redis would not answer anyway.
        socket_connect_timeout=None if timeout is None else max(timeout, _CONNECT_TIMEOUT),
        **options,
    )
    return Redis(connection_pool=pool)


async def once_more_if_reset(
    redis: Redis, call: Callable[[], Awaitable[T]], undo: Callable[[], Awaitable[object]] | None = None
) -> T:
    """`call`, made again on a new connection if its connection broke.

    After a Redis restart every pooled connection is dead, and each failed one call (a 503 each in
    `closed` mode): the pool now drops its other idle ones too, and the call is retried once. The
    server may have run the broken call before its reply was lost: the call must be idempotent,
    or `undo` take back what it did. A timeout is not retried: a hung Redis may still run the call
    later.
    """
    try:
        return await call()
    except ConnectionLost:
        await redis.connection_pool.disconnect(inuse_connections=False)
        if undo is not None:
            await undo()
        return await call()


class RedisFailures:
    """One limit's record of Redis failing: counted every time, logged once a minute.

    In `open` mode, after `PAUSE_AFTER` failures in a row, Redis is left alone for `PAUSE_SECONDS`
    between tries (a circuit breaker): while it hangs, a call goes to the fallback at once instead
    of each one waiting `REDIS_TIMEOUT` first (100 calls at once took 250 ms at the median that
    way). Not in `closed` mode: there a pause refuses everyone, and timeouts in a row also come
    from a busy event loop (a burst), not only from Redis.
    """

    def __init__(self, component: str, fail_mode: FailMode) -> None:
        self.component = component
        self.fail_mode = fail_mode
        self._last_warning = 0.0
        self._streak = 0
        self._retry_at = 0.0

    def paused(self) -> bool:
        """Whether to leave Redis alone for this call; after a pause one call tries it again."""
        if self._streak < PAUSE_AFTER or self.fail_mode == "closed":
            return False
        now = time.monotonic()
        if now < self._retry_at:
            return True
        self._retry_at = now + PAUSE_SECONDS  # this call tries; the others keep away until its verdict
        return False

    def succeeded(self) -> None:
        self._streak = 0

    def failed(self, step: str, exc: BaseException | None) -> None:
        """Note the failure (None: Redis was paused, not tried); in `closed` mode refuse the
        request (503 `limits_unavailable`)."""
        if exc is not None:
            self._streak += 1
            if self._streak >= PAUSE_AFTER:
                self._retry_at = time.monotonic() + PAUSE_SECONDS
        self.note(step, exc)
        if self.fail_mode == "closed":
            raise LimitsUnavailable()

    def note(self, step: str, exc: BaseException | None) -> None:
        """Count and (once a minute) log a failure that refuses nothing: a settlement, after the call."""
        metrics.REDIS_FALLBACKS.labels(component=self.component, mode=self.fail_mode).inc()
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning(
                "redis unavailable for limits",
                extra={
                    "component": self.component,
                    "step": step,
                    "mode": self.fail_mode,
                    "reason": type(exc).__name__ if exc else "paused",
                },
            )
