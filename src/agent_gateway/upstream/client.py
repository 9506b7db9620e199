"""The one boundary to upstream services: the only code that touches the aiohttp session.

Every upstream call (LiteLLM, Letta, AMS, Supabase's JWKS and PostgREST, ownership lookups,
health probes) goes through `UpstreamClient.open`. It times the call, feeds the breaker it is
given, counts errors, and maps aiohttp's and asyncio's exceptions to the gateway's 502/504 in
one place, `mapped_errors`, around sending and around reading or iterating the answer alike.

aiohttp, not httpx: as a proxy client it is several times faster here. No connection limit
(the gateway's own in-flight cap bounds it), no decompression (bytes pass through as sent),
and `Accept-Encoding: identity` upstream so SSE is never compressed into bursts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from agent_gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from agent_gateway.ops import metrics, tracing
from agent_gateway.upstream.breaker import CircuitBreaker, counts_as_failure

log = logging.getLogger("agent_gateway.upstream")
_FAILURES = (TimeoutError, aiohttp.ClientError, OSError)
Body = bytes | AsyncIterator[bytes] | None


def map_client_error(exc: BaseException, upstream: str) -> GatewayError:
    """aiohttp's and asyncio's failures as the gateway's 502/504, counted by kind and logged with their cause."""
    error: GatewayError
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        metrics.UPSTREAM_ERRORS.labels(upstream=upstream, kind="timeout").inc()
        error = UpstreamTimeout()
    else:
        metrics.UPSTREAM_ERRORS.labels(upstream=upstream, kind="connection").inc()
        error = UpstreamError()
    log.warning("upstream call failed", extra={"upstream": upstream, "cause": _cause(exc)})
    # Refused or unreachable before the request was sent: no user's request caused it.
    error.service_fault = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return error


def _cause(exc: BaseException) -> str:
    """What went wrong, in words an operator acts on; never the exception's text, which may
    carry the request (and so a key)."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        number = exc.os_error.errno
        return f"cannot connect: {os.strerror(number) if number else type(exc.os_error).__name__}"
    return type(exc).__name__


class mapped_errors:
    """Re-raises an upstream's transport failure as the gateway's own error (httpcore's `map_exceptions`)."""

    __slots__ = ("upstream",)

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, _FAILURES):
            raise map_client_error(exc, self.upstream) from None


class UpstreamResponse:
    """An upstream's answer whose headers are in; its body is read or iterated through the boundary."""

    __slots__ = ("_response", "content_type", "name", "raw_headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, name: str) -> None:
        self._response = response
        self.name = name
        self.status = response.status
        self.content_type = response.content_type
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = response.raw_headers

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            with mapped_errors(self.name):
                return await self._response.read()
        finally:
            self._response.release()

    async def json(self) -> Any:
        """The body as JSON, or None when it is empty or not JSON."""
        content = await self.read()
        try:
            return orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        with mapped_errors(self.name):
            async for chunk in self._response.content.iter_any():
                yield chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        """Cut the connection: a stream's reader stops at once."""
        self._response.close()


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
    def started(self) -> bool:
        return self._session is not None

    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        timeout: aiohttp.ClientTimeout,
        headers_within: float | None = None,
        breaker: CircuitBreaker | None = None,
        user: str | None = None,
    ) -> UpstreamResponse:
        """Send a request (`path` may carry a query); its answer's headers are in, its body still to read.

        `headers_within` bounds the wait for the answer's headers, apart from the read timeouts in
        `timeout`. The outcome feeds `breaker` (whose `before_call` the caller made): a failure to
        connect counts for everyone, a timeout or a bodiless 502/503/504 for `user`'s own request.
        """
        assert self._session is not None, "UpstreamClient.start() runs in the app's lifespan"
        tracer = tracing.active
        if tracer is not None:
            headers = dict(headers or {})
            with tracer.upstream(self.name, method, headers) as span:
                response = await self._open(method, path, headers, body, timeout, headers_within, breaker, user)
                tracer.upstream_answered(span, response.status)
                return response
        return await self._open(method, path, headers, body, timeout, headers_within, breaker, user)

    async def _open(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        body: Body,
        timeout: aiohttp.ClientTimeout,
        headers_within: float | None,
        breaker: CircuitBreaker | None,
        user: str | None,
    ) -> UpstreamResponse:
        assert self._session is not None
        started = time.perf_counter()
        call = self._session.request(
            method, self.base_url + path, data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
        failure: BaseException | None = None
        try:
            if headers_within is None:
                response = await call
            else:
                async with asyncio.timeout(headers_within):
                    response = await call
        except _FAILURES as exc:
            failure = exc
        except BaseException:
            if breaker is not None:
                breaker.release_probe()  # cancelled: no verdict on the service
            raise
        if failure is not None:
            # Raised here, outside the handler, so aiohttp's exception (whose request_info holds the
            # request's headers, a key among them) is neither cause nor context of ours.
            if isinstance(failure.__cause__, GatewayError):  # the body refused itself (an upload over its cap)
                if breaker is not None:
                    breaker.release_probe()
                raise failure.__cause__
            error = map_client_error(failure, self.name)
            if breaker is not None:
                breaker.failed(None if error.service_fault else user)
            raise error
        metrics.child(metrics.UPSTREAM_LATENCY, self.name).observe(time.perf_counter() - started)
        if response.status >= 500:
            log.warning("upstream answered an error", extra={"upstream": self.name, "status": response.status})
        if breaker is not None:
            has_body = (
                response.content_length not in (None, 0) or response.headers.get("transfer-encoding") == "chunked"
            )
            if counts_as_failure(response.status, has_body):
                breaker.failed(user)
            else:
                breaker.succeeded()
        return UpstreamResponse(response, self.name)

    async def get_json(
        self, path: str, timeout: float, headers: dict[str, str] | None = None, **options: Any
    ) -> tuple[int, Any]:
        """A GET of the gateway's own (a lookup, a probe): status, and the body as JSON or None."""
        response = await self.open(
            "GET", path, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), **options
        )
        return response.status, await response.json()
