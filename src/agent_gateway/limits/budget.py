"""Token budgets, reserve-then-settle (SPEC §5 step 6): the monthly limit and the token rate.

At admission a call reserves its worst case. It is admitted only if
    used + reserved by others + this reservation <= limit
for the month (`monthly_limit`) and for the rolling token window (`RATE_LIMIT_AGENT_TOKENS`),
both in one atomic step; when it ends, the reservation is replaced by the real usage. A
reservation expires on its own (`ttl`), so a crashed process cannot hold budget forever.

On Redis the step is one Lua script, so every instance shares one budget. The month's `used`
lives in Redis as a cache of the ledger: when Redis has none (restart, eviction, a new month)
it is loaded from the ledger, which stays the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_gateway import metrics
from agent_gateway.errors import LimitsUnavailable
from agent_gateway.settings import Rate

log = logging.getLogger("agent_gateway.limits")
MonthTotal = Callable[[str, str], Awaitable[int]]  # (user_id, month) -> settled tokens in the ledger
ADMITTED, OVER_MONTH, OVER_RATE, NEEDS_LOAD = 1, 0, 2, -1
_MONTH_KEY_TTL = 40 * 86400


@dataclass(frozen=True, slots=True)
class BudgetRequest:
    user_id: str
    month: str
    reservation_id: str
    tokens: int
    monthly_limit: int | None
    token_rate: Rate | None


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    outcome: int
    used: int = 0  # month: settled tokens; token rate: tokens in the window
    reserved: int = 0
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        return self.outcome == ADMITTED


class Budgets(Protocol):
    async def reserve(self, request: BudgetRequest) -> BudgetDecision: ...

    async def settle(self, request: BudgetRequest, actual: int) -> None: ...


class _Window:
    """Tokens admitted in a rolling window, by call, with a running total: O(1) per call.

    Entries are appended in admission order with one fixed lifetime, so the oldest always
    expires first.
    """

    __slots__ = ("by_id", "queue", "total")

    def __init__(self) -> None:
        self.queue: deque[list[Any]] = deque()  # [expires, id, tokens]
        self.by_id: dict[str, list[Any]] = {}
        self.total = 0

    def add(self, rid: str, tokens: int, expires: float) -> None:
        entry = [expires, rid, tokens]
        self.queue.append(entry)
        self.by_id[rid] = entry
        self.total += tokens

    def prune(self, now: float) -> int:
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, rid, tokens = queue.popleft()
            if self.by_id.pop(rid, None) is not None:
                self.total -= tokens
        return self.total

    def set(self, rid: str, tokens: int) -> None:
        """Replace an entry's amount (its reservation with the real usage)."""
        entry = self.by_id.get(rid)
        if entry is not None:
            self.total += tokens - entry[2]
            entry[2] = tokens

    def wait_for(self, excess: int, now: float) -> float:
        """Seconds until `excess` tokens have expired."""
        for expires, _, tokens in self.queue:
            excess -= tokens
            if excess <= 0:
                return max(0.0, float(expires) - now)
        return 0.0


@dataclass
class _Month:
    used: int
    loaded_at: float = field(default_factory=time.monotonic)
    # In one process a reservation needs no TTL: it is settled in a `finally`, and a crash takes
    # it along with the process.
    reserved: int = 0
    live: dict[str, int] = field(default_factory=dict)


class MemoryBudgets:
    """One process's budgets; month totals loaded from the ledger on first use."""

    def __init__(self, month_total: MonthTotal, reload_after: float | None = None) -> None:
        self.month_total = month_total
        self.reload_after = reload_after  # re-read the ledger this often (when others write it too)
        self._months: dict[tuple[str, str], _Month] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[_Month]] = {}
        self._windows: dict[str, _Window] = {}  # user -> tokens admitted in the rolling window

    async def reserve(self, request: BudgetRequest) -> BudgetDecision:
        month = None
        if request.monthly_limit is not None:
            month = await self._month(request.user_id, request.month)
        # From here to the end no await: the check and the reservation are one atomic step.
        now = time.monotonic()
        limit = request.monthly_limit
        if month is not None and limit is not None and month.used + month.reserved + request.tokens > limit:
            return BudgetDecision(OVER_MONTH, month.used, month.reserved)
        rate = request.token_rate
        if rate is not None:
            window = self._windows.get(request.user_id)
            if window is None:
                window = self._windows[request.user_id] = _Window()
            in_window = window.prune(now)
            if in_window + request.tokens > rate.limit:
                retry = window.wait_for(in_window + request.tokens - rate.limit, now) or rate.period
                return BudgetDecision(OVER_RATE, in_window, 0, retry)
            window.add(request.reservation_id, request.tokens, now + rate.period)
        if month is not None:
            month.live[request.reservation_id] = request.tokens
            month.reserved += request.tokens
        return BudgetDecision(ADMITTED, month.used if month else 0)

    async def _month(self, user_id: str, month_name: str) -> _Month:
        key = (user_id, month_name)
        month = self._months.get(key)
        fresh = month is not None and (
            self.reload_after is None or time.monotonic() - month.loaded_at < self.reload_after
        )
        if month is not None and fresh:
            return month
        # One ledger read per month at a time; everyone else waits for it, so no late read
        # can overwrite a total that settlements have moved on since.
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(key))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load(self, key: tuple[str, str]) -> _Month:
        used = await self.month_total(*key)
        month = self._months.setdefault(key, _Month(used))
        month.used, month.loaded_at = used, time.monotonic()
        return month

    async def settle(self, request: BudgetRequest, actual: int) -> None:
        month = self._months.get((request.user_id, request.month))
        if month is not None:
            month.reserved -= month.live.pop(request.reservation_id, 0)
            month.used += actual
        window = self._windows.get(request.user_id)
        if window is not None:
            window.set(request.reservation_id, actual)


# Each held amount is a zset (member `id:tokens`, score = when it stops counting) plus a running
# total beside it, so an admission costs O(1) plus what expired since the last one.
# KEYS: month used, month reservations, its total, token window, its total.
# ARGV: tokens, id, monthly limit (-1 = none), reservation ttl ms, month total from the ledger
# ('' = not loaded), token limit (-1 = none), window ms, '1' to replace the month total with the
# ledger's. Returns {outcome, used, reserved, retry ms}.
_RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tokens = tonumber(ARGV[1])
local member = ARGV[2] .. ':' .. ARGV[1]
local function held(zset, total)
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  if #gone > 0 then
    local freed = 0
    for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
    redis.call('DECRBY', total, freed)
  end
  return tonumber(redis.call('GET', total) or '0')
end
local monthly = tonumber(ARGV[3])
local used, reserved = 0, 0
if monthly >= 0 then
  local current = redis.call('GET', KEYS[1])
  if ARGV[8] == '1' then current = false end
  if not current then
    if ARGV[5] == '' then return {-1, 0, 0, 0} end
    redis.call('SET', KEYS[1], ARGV[5], 'EX', 3456000)
    current = ARGV[5]
  end
  used = tonumber(current)
  reserved = held(KEYS[2], KEYS[3])
  if used + reserved + tokens > monthly then return {0, used, reserved, 0} end
end
local rate = tonumber(ARGV[6])
if rate >= 0 then
  local window = tonumber(ARGV[7])
  local in_window = held(KEYS[4], KEYS[5])
  if in_window + tokens > rate then
    local excess = in_window + tokens - rate
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 999, 'WITHSCORES')
    for i = 1, #oldest, 2 do
      excess = excess - tonumber(string.match(oldest[i], ':(%d+)$'))
      if excess <= 0 then return {2, in_window, 0, tonumber(oldest[i + 1]) - now} end
    end
    return {2, in_window, 0, window}
  end
  redis.call('ZADD', KEYS[4], now + window, member)
  redis.call('INCRBY', KEYS[5], tokens)
  redis.call('PEXPIRE', KEYS[4], window)
  redis.call('PEXPIRE', KEYS[5], window)
end
if monthly >= 0 then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + ttl, member)
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {1, used, reserved, 0}
"""

# KEYS as above. ARGV: id, reserved tokens, actual tokens. The month total grows only if Redis
# still holds it; otherwise the next load reads this call from the ledger.
_SETTLE = """
local reserved = ARGV[1] .. ':' .. ARGV[2]
if redis.call('ZREM', KEYS[2], reserved) == 1 then redis.call('DECRBY', KEYS[3], ARGV[2]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[3]) end
local until_ = redis.call('ZSCORE', KEYS[4], reserved)
if until_ then
  redis.call('ZREM', KEYS[4], reserved)
  redis.call('ZADD', KEYS[4], until_, ARGV[1] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[5], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 1
"""


class RedisBudgets:
    """Budgets shared by every instance. When Redis fails: `open` checks against the ledger in
    this process (a metric and a log line say so), `closed` refuses with 503."""

    def __init__(
        self,
        redis: Redis,
        month_total: MonthTotal,
        ttl: float,
        fail_mode: Literal["open", "closed"],
        prefix: str = "agw:budget:",
    ) -> None:
        self.redis = redis
        self.month_total = month_total
        self.ttl = ttl
        self.fail_mode = fail_mode
        self.prefix = prefix
        self.fallback = MemoryBudgets(month_total, reload_after=5.0)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._last_warning = 0.0
        self._held_by_fallback: set[str] = set()
        # Months whose Redis total missed a settlement (Redis failed): reloaded from the ledger.
        self._stale: set[tuple[str, str]] = set()
        self._releases: set[asyncio.Task[None]] = set()

    def _keys(self, request: BudgetRequest) -> list[str]:
        month = f"{self.prefix}{request.user_id}:{request.month}"
        window = f"{self.prefix}{request.user_id}:tokens"
        return [f"{month}:used", f"{month}:reserved", f"{month}:reserved:total", window, f"{window}:total"]

    async def reserve(self, request: BudgetRequest) -> BudgetDecision:
        args: list[int | str] = [
            request.tokens,
            request.reservation_id,
            request.monthly_limit if request.monthly_limit is not None else -1,
            int(self.ttl * 1000),
            "",
            request.token_rate.limit if request.token_rate else -1,
            int(request.token_rate.period * 1000) if request.token_rate else 0,
            "0",
        ]
        month = (request.user_id, request.month)
        try:
            if month in self._stale and request.monthly_limit is not None:
                args[4], args[7] = await self.month_total(*month), "1"
            result = await self._reserve(keys=self._keys(request), args=args)
            if int(result[0]) == NEEDS_LOAD:
                args[4] = await self.month_total(*month)
                result = await self._reserve(keys=self._keys(request), args=args)
            self._stale.discard(month)
        except (RedisError, OSError) as exc:
            return await self._degraded(request, exc)
        outcome, used, reserved, retry_ms = (int(value) for value in result)
        return BudgetDecision(outcome, used, reserved, retry_ms / 1000)

    async def settle(self, request: BudgetRequest, actual: int) -> None:
        if request.reservation_id in self._held_by_fallback:
            self._held_by_fallback.discard(request.reservation_id)
            self._stale.add((request.user_id, request.month))  # Redis never saw this call
            await self.fallback.settle(request, actual)
            return
        try:
            await self._settle(keys=self._keys(request), args=[request.reservation_id, request.tokens, actual])
        except (RedisError, OSError) as exc:
            # The reservation expires by itself; the month total is reloaded from the ledger.
            self._stale.add((request.user_id, request.month))
            self._warn("settle", exc)

    async def _degraded(self, request: BudgetRequest, exc: Exception) -> BudgetDecision:
        self._warn("reserve", exc)
        # A timed-out script may still have reserved: take that back once Redis answers again.
        release = asyncio.create_task(self._release(request))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        if self.fail_mode == "closed":
            raise LimitsUnavailable()
        # Checked against the ledger, never unchecked: the fallback re-reads month totals from it.
        decision = await self.fallback.reserve(request)
        if decision.admitted:
            self._held_by_fallback.add(request.reservation_id)
        return decision

    async def _release(self, request: BudgetRequest) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._settle(keys=self._keys(request), args=[request.reservation_id, request.tokens, 0])

    def _warn(self, step: str, exc: Exception) -> None:
        metrics.REDIS_FALLBACKS.labels(component="budget", mode=self.fail_mode).inc()
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning(
                "redis unavailable for budgets",
                extra={"step": step, "mode": self.fail_mode, "reason": type(exc).__name__},
            )
