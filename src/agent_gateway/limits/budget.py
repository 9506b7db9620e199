"""A call's limits in one step (SPEC §5 steps 5-6): the request rate, then reserve-then-settle
token budgets, the token rate and the monthly limit.

The request counts against `RATE_LIMIT_AGENT` (a sliding log, as in `rate.py`). Then the call
reserves its worst case, and is admitted only if
    used + reserved by others + this reservation <= limit
for the month (`monthly_limit`) and for the rolling token window (`RATE_LIMIT_AGENT_TOKENS`);
when it ends, the reservation is replaced by the real usage. A reservation expires on its own
(`ttl`), so a crashed process cannot hold budget forever.

On Redis the whole step is one Lua script, one round trip per admission, so every instance
shares one exact limit. The month's `used` lives in Redis as a cache of the ledger: when Redis
has none (restart, eviction, a new month) it is loaded from the ledger, the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_gateway.domain import Rate
from agent_gateway.limits.rate import MemoryRateLimiter
from agent_gateway.limits.redis import FailMode, RedisFailures, once_more_if_reset

log = logging.getLogger("agent_gateway.limits")
MonthTotal = Callable[[str, str], Awaitable[int]]  # (user_id, month) -> settled tokens in the ledger
# (user_id, month) -> (call id, reserved tokens) of the ledger's calls in flight
MonthInFlight = Callable[[str, str], Awaitable[list[tuple[str, int]]]]
ADMITTED, OVER_MONTH, OVER_RATE, OVER_REQUESTS, NEEDS_LOAD = 1, 0, 2, 3, -1


@dataclass(frozen=True, slots=True)
class BudgetRequest:
    user_id: str
    month: str
    reservation_id: str
    tokens: int
    monthly_limit: int | None
    token_rate: Rate | None
    estimate: int = 0  # what the call is billed if its instance dies first (the ledger's recovery)
    requests: Rate | None = None  # the request rate (RATE_LIMIT_AGENT)


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    outcome: int
    used: int = 0  # month: settled tokens; token rate: tokens in the window
    reserved: int = 0
    retry_after: float = 0.0
    remaining: int = 0  # requests left in the request-rate window
    reset: float = 0.0  # seconds until the oldest request in the window stops counting

    @property
    def admitted(self) -> bool:
        return self.outcome == ADMITTED


class Budgets(Protocol):
    async def reserve(self, request: BudgetRequest) -> BudgetDecision: ...

    async def settle(self, request: BudgetRequest, actual: int) -> None: ...

    async def month_held(self, user_id: str, month: str) -> int:
        """Tokens the month holds now: used plus reserved by calls in flight."""
        ...


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
    """One process's budgets; month totals loaded from the ledger on first use.

    Bounded: a month unused for an hour is dropped (the next call reloads it from the ledger,
    which holds every settled call), and so is a token window unused for a day.
    """

    def __init__(self, month_total: MonthTotal, reload_after: float | None = None) -> None:
        self.month_total = month_total
        self.reload_after = reload_after  # re-read the ledger this often (when others write it too)
        self._requests = MemoryRateLimiter()
        self._months: TTLCache[tuple[str, str], _Month] = TTLCache(1_000_000, 3600.0)
        self._loading: dict[tuple[str, str], asyncio.Future[_Month]] = {}
        self._windows: TTLCache[str, _Window] = TTLCache(1_000_000, 86400.0)  # user -> the rolling window

    async def reserve(self, request: BudgetRequest) -> BudgetDecision:
        month = None
        if request.monthly_limit is not None:
            month = await self._month(request.user_id, request.month)
        # From here to the end no await: the checks and the reservation are one atomic step.
        remaining, reset = 0, 0.0
        if request.requests is not None:
            hit = self._requests.hit_now(request.user_id, request.requests)
            if not hit.allowed:
                return BudgetDecision(OVER_REQUESTS, retry_after=hit.retry_after, reset=hit.reset)
            remaining, reset = hit.remaining, hit.reset
        now = time.monotonic()
        limit = request.monthly_limit
        if month is not None and limit is not None and month.used + month.reserved + request.tokens > limit:
            return BudgetDecision(OVER_MONTH, month.used, month.reserved)
        rate = request.token_rate
        if rate is not None:
            window = self._windows.get(request.user_id) or _Window()
            self._windows[request.user_id] = window  # (re)set: kept a day from its last use
            in_window = window.prune(now)
            if in_window + request.tokens > rate.limit:
                retry = window.wait_for(in_window + request.tokens - rate.limit, now) or rate.period
                return BudgetDecision(OVER_RATE, in_window, 0, retry)
            window.add(request.reservation_id, request.tokens, now + rate.period)
        if month is not None:
            month.live[request.reservation_id] = request.tokens
            month.reserved += request.tokens
        return BudgetDecision(ADMITTED, month.used if month else 0, remaining=remaining, reset=reset)

    async def month_held(self, user_id: str, month: str) -> int:
        held = await self._month(user_id, month)
        return held.used + held.reserved

    async def _month(self, user_id: str, month_name: str) -> _Month:
        key = (user_id, month_name)
        month = self._months.get(key)
        fresh = month is not None and (
            self.reload_after is None or time.monotonic() - month.loaded_at < self.reload_after
        )
        if month is not None and fresh:
            self._months[key] = month  # (re)set: kept an hour from its last use
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
# KEYS: month used, month reservations, its total, token window, its total, this instance's
# reservations, the request log, the call's abandoned mark, its reclaimed and settled marks.
# ARGV: tokens, id, monthly limit (-1 = none), reservation ttl ms, month total from the ledger
# ('' = not loaded), token limit (-1 = none), window ms, the call's estimate, request limit
# (-1 = none), request window ms, then the ledger's calls in flight when it loads the month.
# Returns {outcome, used, reserved, retry ms, requests left, request reset ms}.
# The request log is `rate.py`'s sliding log, here so that one admission is one round trip.
_RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tokens = tonumber(ARGV[1])
local monthly = tonumber(ARGV[3])
-- Given up on by its caller (a timeout) before it ran: it reserves nothing.
if redis.call('EXISTS', KEYS[8]) == 1 then return {-2, 0, 0, 0, 0, 0} end
if monthly >= 0 and ARGV[5] == '' and redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0, 0, 0, 0} end
local left, reset = 0, 0
local requests = tonumber(ARGV[9])
if requests >= 0 then
  local period = tonumber(ARGV[10])
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - period)
  local count = redis.call('ZCARD', KEYS[7])
  local oldest = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
  local first = now
  if oldest[2] then first = tonumber(oldest[2]) end
  reset = first + period - now
  if redis.call('ZSCORE', KEYS[7], ARGV[2]) then count = count - 1  -- a retry: counted already
  elseif count >= requests then
    local nth = redis.call('ZRANGE', KEYS[7], count - requests, count - requests, 'WITHSCORES')
    return {3, 0, 0, tonumber(nth[2]) + period - now, 0, reset}
  end
  redis.call('ZADD', KEYS[7], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[7], period)
  left = requests - count - 1
end
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
local used, reserved = 0, 0
if monthly >= 0 then
  local current = redis.call('GET', KEYS[1])
  if not current then
    redis.call('SET', KEYS[1], ARGV[5], 'EX', 3456000)  -- 40 days: a month and its stragglers
    current = ARGV[5]
    -- The reservations become the ledger's calls in flight (ARGV[11..], id then tokens), and
    -- those admitted in the last 2 s, whose rows the ledger may not have committed yet. Older
    -- ones it does not list have ended: Redis missed their settlement (it was away), and the
    -- ledger's total counts them already.
    local ttl = tonumber(ARGV[4])
    local listed = {}
    for i = 11, #ARGV, 2 do listed[ARGV[i] .. ':' .. ARGV[i + 1]] = tonumber(ARGV[i + 1]) end
    local kept = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #kept, 2 do
      if tonumber(kept[i + 1]) < now + ttl - 2000 and not listed[kept[i]] then
        redis.call('ZREM', KEYS[2], kept[i])
        redis.call('DECRBY', KEYS[3], tonumber(string.match(kept[i], ':(%d+)$')))
      end
    end
    -- A listed call Redis saw settle in the last seconds has ended; its row's settlement is in
    -- its instance's next ledger batch.
    local settled = string.sub(KEYS[10], 1, #KEYS[10] - #ARGV[2])
    for held_member, held_tokens in pairs(listed) do
      local id = string.match(held_member, '^(.*):%d+$')
      if redis.call('EXISTS', settled .. id) == 0 and redis.call('ZADD', KEYS[2], 'NX', now + ttl, held_member) == 1 then
        redis.call('INCRBY', KEYS[3], held_tokens)
      end
    end
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  used = tonumber(current)
  reserved = held(KEYS[2], KEYS[3])
  if used + reserved + tokens > monthly then return {0, used, reserved, 0, left, reset} end
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
      if excess <= 0 then return {2, in_window, 0, tonumber(oldest[i + 1]) - now, left, reset} end
    end
    return {2, in_window, 0, window, left, reset}
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
  -- The instance's own record, so that another can free this if the instance dies.
  redis.call('HSET', KEYS[6], member, KEYS[1] .. '|' .. KEYS[2] .. '|' .. KEYS[3] .. '|' .. ARGV[8])
  redis.call('PEXPIRE', KEYS[6], ttl)
end
return {1, used, reserved, 0, left, reset}
"""

# KEYS as above. ARGV: id, reserved tokens, actual tokens. The month total grows only if Redis
# still holds it; otherwise the next load reads this call from the ledger. A call whose instance
# was taken for dead (it stalled) had its estimate added by the reclaim: only the rest is added.
_SETTLE = """
local reserved = ARGV[1] .. ':' .. ARGV[2]
redis.call('SET', KEYS[10], 1, 'PX', 10000)  -- for a reload from a ledger that has not this yet
if redis.call('ZREM', KEYS[2], reserved) == 1 then redis.call('DECRBY', KEYS[3], ARGV[2]) end
redis.call('HDEL', KEYS[6], reserved)
local actual = tonumber(ARGV[3])
local billed = redis.call('GET', KEYS[9])
if billed then
  redis.call('DEL', KEYS[9])
  actual = actual - tonumber(billed)
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], actual) end
local until_ = redis.call('ZSCORE', KEYS[4], reserved)
if until_ then
  redis.call('ZREM', KEYS[4], reserved)
  redis.call('ZADD', KEYS[4], until_, ARGV[1] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[5], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 1
"""


# KEYS: a dead instance's reservations. ARGV: the key prefix, the reservation ttl ms. Frees each
# one still held, adding its estimate to the month total (as the ledger's recovery bills the
# crashed call) and noting that it did, for the settlement of an instance that was only stalled.
# Returns how many it freed.
_RECLAIM = """
local freed = 0
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local member = held[i]
  local used, zset, total, estimate = string.match(held[i + 1], '([^|]*)|([^|]*)|([^|]*)|(%d+)')
  if redis.call('ZREM', zset, member) == 1 then
    redis.call('DECRBY', total, tonumber(string.match(member, ':(%d+)$')))
    if redis.call('EXISTS', used) == 1 then
      redis.call('INCRBY', used, estimate)
      local id = string.match(member, '^(.*):%d+$')
      redis.call('SET', ARGV[1] .. 'reclaimed:' .. id, estimate, 'PX', ARGV[2])
    end
    freed = freed + 1
  end
end
redis.call('DEL', KEYS[1])
return freed
"""


# KEYS: month used, month reservations, its total. ARGV: the month total from the ledger ('' = not
# loaded). Returns used + reserved, or -1 when the month must be loaded first.
_HELD = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local current = redis.call('GET', KEYS[1])
if not current then  -- read, not stored: loading is the admission's (it rebuilds the reservations)
  if ARGV[1] == '' then return -1 end
  current = ARGV[1]
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #gone > 0 then
  local freed = 0
  for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('DECRBY', KEYS[3], freed)
end
return tonumber(current) + tonumber(redis.call('GET', KEYS[3]) or '0')
"""


class RedisBudgets:
    """Budgets shared by every instance. When Redis fails: `open` checks against the ledger in
    this process (a metric and a log line say so), `closed` refuses with 503."""

    def __init__(
        self,
        redis: Redis,
        month_total: MonthTotal,
        ttl: float,
        fail_mode: FailMode,
        prefix: str = "agw:budget:",
        fallback: Budgets | None = None,
        in_flight: MonthInFlight | None = None,
        instance: str | None = None,
    ) -> None:
        self.redis = redis
        self.month_total = month_total
        self.in_flight = in_flight
        self.ttl = ttl
        self.fail_mode = fail_mode
        self.prefix = prefix
        # Redis away: this process's own budgets, or the ledger's shared check (limits/shared_month.py).
        self.fallback = fallback or MemoryBudgets(month_total, reload_after=5.0)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._held = redis.register_script(_HELD)
        self._reclaim = redis.register_script(_RECLAIM)
        self.instance = instance or os.urandom(8).hex()
        self._failures = RedisFailures("budget", fail_mode)
        self._held_by_fallback: set[str] = set()
        # Months whose Redis total missed a settlement (Redis failed): reloaded from the ledger.
        self._stale: set[tuple[str, str]] = set()
        self._releases: set[asyncio.Task[None]] = set()

    def _keys(self, request: BudgetRequest) -> list[str]:
        month = f"{self.prefix}{request.user_id}:{request.month}"
        window = f"{self.prefix}{request.user_id}:tokens"
        held = self._instance_key(self.instance, "held")
        requests = f"{self.prefix}{request.user_id}:requests"
        return [
            f"{month}:used",
            f"{month}:reserved",
            f"{month}:reserved:total",
            window,
            f"{window}:total",
            held,
            requests,
            f"{self.prefix}abandoned:{request.reservation_id}",
            f"{self.prefix}reclaimed:{request.reservation_id}",
            f"{self.prefix}settled:{request.reservation_id}",
        ]

    def _instance_key(self, instance: str, what: str) -> str:
        return f"{self.prefix}instance:{instance}:{what}"

    async def keep_fresh(self, interval: float = 0.5) -> None:
        """Make every instance reload, from the ledger, the months this one changed while Redis
        was away (the calls its fallback admitted, the settlements Redis missed): their totals in
        Redis are stale, and the other instances would trust them."""
        while True:
            await asyncio.sleep(interval)
            for user_id, month in list(self._stale):
                self._stale.discard((user_id, month))  # marked again meanwhile: done again next round
                try:
                    await self.redis.delete(f"{self.prefix}{user_id}:{month}:used")  # the next admission reloads
                except (RedisError, OSError):
                    self._stale.add((user_id, month))
                    break  # still away: the next round tries again

    async def reclaim(self, dead: list[str]) -> None:
        """Free the reservations of instances the ledger found dead (stores/instances.py: by their
        heartbeats in the database, not in Redis, which a partition can silence alone)."""
        for other in dead:
            try:
                freed = await self._reclaim(
                    keys=[self._instance_key(other, "held")], args=[self.prefix, int(self.ttl * 1000)]
                )
            except (RedisError, OSError):
                return  # Redis is away: the reservations expire on their own
            if freed:
                log.warning("freed reservations of a dead instance", extra={"instance": other, "reservations": freed})

    async def reserve(self, request: BudgetRequest) -> BudgetDecision:
        args: list[int | str] = [
            request.tokens,
            request.reservation_id,
            request.monthly_limit if request.monthly_limit is not None else -1,
            int(self.ttl * 1000),
            "",
            request.token_rate.limit if request.token_rate else -1,
            int(request.token_rate.period * 1000) if request.token_rate else 0,
            request.estimate,
            request.requests.limit if request.requests else -1,
            int(request.requests.period * 1000) if request.requests else 0,
        ]
        keys = self._keys(request)
        if self._failures.paused():
            return await self._degraded(request, None)
        try:
            result = await once_more_if_reset(
                self.redis,
                lambda: self._reserve_once(request, keys, args),
                # A reservation is not idempotent: settling it with 0 takes back what it did.
                undo=lambda: self._settle(keys=keys, args=[request.reservation_id, request.tokens, 0]),
            )
            self._stale.discard((request.user_id, request.month))
        except (RedisError, OSError) as exc:
            return await self._degraded(request, exc)
        self._failures.succeeded()
        outcome, used, reserved, retry_ms, remaining, reset_ms = (int(value) for value in result)
        return BudgetDecision(outcome, used, reserved, retry_ms / 1000, remaining, reset_ms / 1000)

    async def _reserve_once(self, request: BudgetRequest, keys: list[str], args: list[int | str]) -> list[Any]:
        args = list(args)
        month = (request.user_id, request.month)
        if month in self._stale and request.monthly_limit is not None:
            # Redis' total missed this instance's calls: drop it, once for all the calls here, and
            # whoever comes first (any instance) reloads it from the ledger.
            self._stale.discard(month)
            try:
                await self.redis.delete(keys[0])
            except BaseException:
                self._stale.add(month)
                raise
        result: list[Any] = await self._reserve(keys=keys, args=args)
        if int(result[0]) == NEEDS_LOAD:
            args[4] = await self.month_total(*month)
            args += await self._held_in_ledger(month)
            result = await self._reserve(keys=keys, args=args)
        return result

    async def _held_in_ledger(self, month: tuple[str, str]) -> list[int | str]:
        """The ledger's calls in flight for the month, as the script's trailing arguments."""
        if self.in_flight is None:
            return []
        return [value for row_id, tokens in await self.in_flight(*month) for value in (row_id, tokens)]

    async def month_held(self, user_id: str, month: str) -> int:
        keys = self._keys(BudgetRequest(user_id, month, "", 0, None, None))[:3]
        try:
            held = int(await self._held(keys=keys, args=[""]))
            if held < 0:
                held = int(await self._held(keys=keys, args=[await self.month_total(user_id, month)]))
        except (RedisError, OSError) as exc:
            self._failures.failed("month", exc)
            return await self.fallback.month_held(user_id, month)
        return held

    async def settle(self, request: BudgetRequest, actual: int) -> None:
        if request.reservation_id in self._held_by_fallback:
            self._held_by_fallback.discard(request.reservation_id)
            self._stale.add((request.user_id, request.month))  # Redis never saw this call
            await self.fallback.settle(request, actual)
            if self._failures.paused():
                return
            # A reload from the ledger while the call ran made it a reservation in Redis too.
        try:
            await self._settle(keys=self._keys(request), args=[request.reservation_id, request.tokens, actual])
        except (RedisError, OSError) as exc:
            # The reservation expires by itself; the month total is reloaded from the ledger.
            self._stale.add((request.user_id, request.month))
            self._failures.note("settle", exc)

    async def _degraded(self, request: BudgetRequest, exc: Exception | None) -> BudgetDecision:
        """The fallback's decision, Redis having failed (`exc`) or been left alone (None)."""
        if exc is not None:
            # A timed-out script may still have reserved: take that back once Redis answers again.
            release = asyncio.create_task(self._release(request))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
        self._failures.failed("reserve", exc)
        # Checked against the ledger, never unchecked: the fallback re-reads month totals from it.
        decision = await self.fallback.reserve(request)
        if decision.admitted:
            self._held_by_fallback.add(request.reservation_id)
        return decision

    async def _release(self, request: BudgetRequest) -> None:
        """Take back a reservation a timed-out script may have made. While Redis hangs, that script
        waits in its queue and may run after this: the mark tells it to reserve nothing, the settle
        frees what it reserved if it ran first. Retried until Redis answers, for as long as the
        reservation could live."""
        keys = self._keys(request)
        deadline = time.monotonic() + self.ttl
        pause = 0.1
        while time.monotonic() < deadline:
            try:
                await self.redis.set(keys[7], 1, px=int(self.ttl * 1000))
                await self._settle(keys=keys, args=[request.reservation_id, request.tokens, 0])
                return
            except (RedisError, OSError):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
