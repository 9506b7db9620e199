"""The one pooled HTTP client to upstream services, and the boundary where its errors become ours.

aiohttp, not httpx: as a proxy client it is several times faster here. No connection limit
(the gateway's own in-flight cap bounds it), no decompression (bytes pass through as sent),
and `Accept-Encoding: identity` upstream so SSE is never compressed into bursts.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from agent_gateway import metrics
from agent_gateway.errors import GatewayError, UpstreamError, UpstreamTimeout

# Upstream answer headers a client may see; everything else (Set-Cookie, Access-Control-*,
# the proxy's own x-litellm-* internals, hop-by-hop headers) stays behind.
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "openai-model",
        "openai-processing-ms",
        "openai-version",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    }
)


def map_client_error(exc: BaseException, upstream: str) -> GatewayError:
    """aiohttp's and asyncio's failures as the gateway's 502/504."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        metrics.UPSTREAM_ERRORS.labels(upstream=upstream, kind="timeout").inc()
        return UpstreamTimeout()
    metrics.UPSTREAM_ERRORS.labels(upstream=upstream, kind="connection").inc()
    return UpstreamError()


class UpstreamClient:
    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient.start() runs in the app's lifespan"
        return self._session

    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        body: bytes | None = None,
        timeout: aiohttp.ClientTimeout,
        headers_within: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Open an upstream response (the caller releases it); failures and timeouts raise as 502/504.

        `headers_within` bounds the wait for response headers (streams), separately from the
        read timeouts in `timeout`.
        """
        started = time.perf_counter()
        call = self.session.request(
            method, self.base_url + path, data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
        try:
            if headers_within is None:
                response = await call
            else:
                async with asyncio.timeout(headers_within):
                    response = await call
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise map_client_error(exc, self.name) from None
        metrics.child(metrics.UPSTREAM_LATENCY, self.name).observe(time.perf_counter() - started)
        return response

    async def get_status(self, path: str, timeout: float) -> tuple[int, float]:
        started = time.perf_counter()
        async with self.session.get(
            self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            await response.read()
            return response.status, time.perf_counter() - started


def response_headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower(), value)
        for name, value in response.raw_headers
        if name.decode("latin-1").lower() in RESPONSE_HEADERS
    ]
