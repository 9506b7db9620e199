"""`/health`: every configured dependency checked at once, each within a short timeout (SPEC §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent_gateway.upstream import UpstreamClient

if TYPE_CHECKING:
    from agent_gateway.app import Gateway

CHECK_TIMEOUT = 2.0


_CACHE_SECONDS = 1.0  # /health is open to anyone: at most one round of checks a second


async def check_health(gateway: Gateway) -> dict[str, Any]:
    last = gateway.last_health
    if last is not None and time.monotonic() - last[0] < _CACHE_SECONDS and not gateway.draining:
        return last[1]
    report = await _check(gateway)
    gateway.last_health = (time.monotonic(), report)
    return report


async def _check(gateway: Gateway) -> dict[str, Any]:
    settings = gateway.settings
    checks: dict[str, Callable[[], Awaitable[None]] | None] = {
        "database": gateway.database.ping,
        "redis": _redis_ping(gateway) if gateway.redis is not None else None,
        # LiteLLM's own /health calls every model; liveliness only asks whether it is up.
        "litellm": lambda: _http_ok(gateway.litellm, "/health/liveliness"),
        "letta": _probe(gateway.letta, "/v1/health/"),
        "ams": _probe(gateway.ams, "/health"),
        "supabase": (lambda: _http_ok(gateway.supabase, "/auth/v1/.well-known/jwks.json"))
        if settings.supabase_url
        else None,
    }
    names = list(checks)
    results = await asyncio.gather(*(_run(checks[name]) for name in names))
    report = dict(zip(names, results, strict=True))
    breakers = gateway.breakers.states()
    for name, result in report.items():
        if name in breakers:
            result["breaker"] = breakers[name]
    if any(key.startswith("litellm:") for key in breakers):
        report["litellm"]["breakers"] = {k.split(":", 1)[1]: v for k, v in breakers.items() if k.startswith("litellm:")}
    healthy = all(result["status"] in ("ok", "not_configured") for result in results)
    status = "draining" if gateway.draining else ("ok" if healthy else "error")
    return {"status": status, "checks": report}


def _redis_ping(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    async def ping() -> None:
        assert gateway.redis is not None
        await gateway.redis.ping()

    return ping


def _probe(client: UpstreamClient | None, path: str) -> Callable[[], Awaitable[None]] | None:
    return None if client is None else lambda: _http_ok(client, path)


async def _http_ok(client: UpstreamClient, path: str) -> None:
    status, _ = await client.get_status(path, CHECK_TIMEOUT)
    if status >= 400:
        raise RuntimeError(f"HTTP {status}")


async def _run(check: Callable[[], Awaitable[None]] | None) -> dict[str, Any]:
    if check is None:
        return {"status": "not_configured"}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except TimeoutError:
        return {"status": "error", "reason": "timeout", "latency_ms": round(CHECK_TIMEOUT * 1000)}
    except Exception as exc:
        # The exception's type and a short text, never a URL with credentials or a stack.
        reason = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
        return {"status": "error", "reason": reason, "latency_ms": _ms(started)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
