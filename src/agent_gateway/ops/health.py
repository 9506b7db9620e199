"""`/health` and `agent-gateway check`: every configured dependency probed at once, each within a
short timeout (SPEC §7). `HealthChecks` is built once from the configured services and knows
nothing else of the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent_gateway.errors import GatewayError
from agent_gateway.upstream.breaker import Breakers
from agent_gateway.upstream.client import UpstreamClient

CHECK_TIMEOUT = 2.0
CACHE_SECONDS = 1.0  # /health is open to anyone: at most one round of checks a second
Probe = Callable[[], Awaitable[None]]


def http_probe(client: UpstreamClient, path: str, headers: dict[str, str] | None = None) -> Probe:
    """OK when `path` answers below 400: a service's own health route, never one that does work
    (LiteLLM's /health calls every model; its /health/liveliness only asks whether it is up)."""

    async def probe() -> None:
        status, _ = await client.get_json(path, CHECK_TIMEOUT, headers)
        if status >= 400:
            raise RuntimeError(f"HTTP {status}")

    return probe


class HealthChecks:
    def __init__(
        self,
        probes: Mapping[str, Probe | None],
        breakers: Breakers | None = None,
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.probes = dict(probes)  # name -> probe; None: not configured
        self.breakers = breakers
        self.is_draining = is_draining
        self._last: tuple[float, dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        """Every check's status, latency and breaker; cached for a second (but never while draining)."""
        draining = self.is_draining()
        if self._last is not None and time.monotonic() - self._last[0] < CACHE_SECONDS and not draining:
            return self._last[1]
        names = list(self.probes)
        results = await asyncio.gather(*(_run(self.probes[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        states = self.breakers.states() if self.breakers is not None else {}
        for name, result in checks.items():
            if name in states:
                result["breaker"] = states[name]
        per_model = {key.split(":", 1)[1]: state for key, state in states.items() if key.startswith("litellm:")}
        if per_model and "litellm" in checks:
            checks["litellm"]["breakers"] = per_model
        healthy = all(result["status"] in ("ok", "not_configured") for result in results)
        report = {"status": "draining" if draining else "ok" if healthy else "error", "checks": checks}
        self._last = (time.monotonic(), report)
        return report


async def _run(probe: Probe | None) -> dict[str, Any]:
    if probe is None:
        return {"status": "not_configured"}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe()
    except TimeoutError:
        return {"status": "error", "reason": "timeout", "latency_ms": round(CHECK_TIMEOUT * 1000)}
    except Exception as exc:
        # A short text, never a URL with credentials or a stack.
        reason = str(exc) if isinstance(exc, RuntimeError | GatewayError) else type(exc).__name__
        return {"status": "error", "reason": reason, "latency_ms": _ms(started)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
