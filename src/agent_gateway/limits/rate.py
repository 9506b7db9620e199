"""Request-rate limits as a sliding log: at most N hits in any rolling window, exactly.

A fixed window lets 2N through across a boundary and GCRA smooths bursts into a schedule;
a sliding log admits the first N of any window and no more, which is what a user reading
"100/minute" expects. In-process for one instance; on Redis one Lua script per hit, so any
number of instances share one exact limit.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_gateway.domain import Rate
from agent_gateway.limits.redis import FailMode, RedisFailures, once_more_if_reset


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    reset: float  # seconds until the oldest hit in the window expires
    retry_after: float

    def headers(self, rate: Rate, scope: str) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` as in draft-ietf-httpapi-ratelimit-headers."""
        return {
            "RateLimit-Policy": f'"{scope}";q={rate.limit};w={rate.window}',
            "RateLimit": f'"{scope}";r={self.remaining};t={math.ceil(self.reset)}',
        }


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: Rate) -> RateDecision: ...


class MemoryRateLimiter:
    """One process's sliding logs, pruned as they are touched; a log untouched for a day is dropped."""

    def __init__(self, horizon: float = 86400.0, size: int = 1_000_000) -> None:
        self._logs: TTLCache[str, deque[float]] = TTLCache(size, horizon)

    async def hit(self, key: str, rate: Rate) -> RateDecision:
        return self.hit_now(key, rate)

    def hit_now(self, key: str, rate: Rate) -> RateDecision:
        now = time.monotonic()
        hits = self._logs.get(key)
        if hits is None:
            hits = deque()
        self._logs[key] = hits  # (re)set: the log lives a day from its last hit
        horizon = now - rate.period
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= rate.limit:
            # period - age, not (hit + period) - now: that can round to a hair over the period.
            retry = rate.period - (now - hits[-rate.limit])
            return RateDecision(False, 0, rate.period - (now - hits[0]), retry)
        hits.append(now)
        return RateDecision(True, rate.limit - len(hits), rate.period - (now - hits[0]), 0.0)


# KEYS[1] the log; ARGV: limit, period in ms, the hit's unique member. Redis' own clock is the
# one clock all instances share. A hit already in the log (a retry) is not counted again.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local count = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local first = now
if oldest[2] then first = tonumber(oldest[2]) end
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return {1, limit - count, first + period - now, 0} end
if count >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return {0, 0, first + period - now, tonumber(nth[2]) + period - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], period)
return {1, limit - count - 1, first + period - now, 0}
"""


class RedisRateLimiter:
    """The sliding log on Redis. When Redis fails: `open` falls back to this process's own log
    (counted in a metric, logged once a minute), `closed` refuses with 503."""

    def __init__(self, redis: Redis, fail_mode: FailMode, prefix: str = "agw:rate:") -> None:
        self.redis = redis
        self.fail_mode = fail_mode
        self.prefix = prefix
        self.fallback = MemoryRateLimiter()
        self._script = redis.register_script(_SLIDING_LOG)
        self._failures = RedisFailures("rate_limit", fail_mode)

    async def hit(self, key: str, rate: Rate) -> RateDecision:
        keys = [self.prefix + key]
        args: list[int | str] = [rate.limit, int(rate.period * 1000), os.urandom(8).hex()]
        if self._failures.paused():
            self._failures.failed("hit", None)
            return self.fallback.hit_now(key, rate)
        try:
            allowed, remaining, reset_ms, retry_ms = await once_more_if_reset(
                self.redis, lambda: self._script(keys=keys, args=args)
            )
        except (RedisError, OSError) as exc:
            self._failures.failed("hit", exc)
            return self.fallback.hit_now(key, rate)
        self._failures.succeeded()
        return RateDecision(bool(allowed), int(remaining), int(reset_ms) / 1000, int(retry_ms) / 1000)
