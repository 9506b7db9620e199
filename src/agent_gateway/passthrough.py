"""Pass-through to the platform's other services (Letta, AMS), SPEC §6.

The upstream URL is always the configured origin and prefix plus path segments that were
checked one by one: no `.`/`..`/empty segment, no encoded `/` or `\\`, no control character.
Headers go by allow-list both ways. Bodies stream through with a byte cap, answers stream
back as they arrive (SSE included), and every call feeds the service's circuit breaker.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp

from agent_gateway import metrics
from agent_gateway.breaker import CircuitBreaker, counts_as_failure
from agent_gateway.errors import BadRequest, BodyTooLarge, GatewayError, ServiceUnavailable, sse_error_event
from agent_gateway.streams import StreamRegistry
from agent_gateway.types import Headers, Receive, Send
from agent_gateway.upstream import UpstreamClient, map_client_error

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_HEADERS = (b"content-type", b"accept", b"traceparent", b"tracestate", b"last-event-id")
_RESPONSE_HEADERS = frozenset(
    {b"content-type", b"content-disposition", b"cache-control", b"etag", b"last-modified", b"retry-after", b"location"}
)


def split_path(raw_path: bytes, prefix: str) -> list[str]:
    """The decoded segments after `prefix`, each one safe to put back into a URL (else 400)."""
    raw = raw_path.decode("latin-1")
    if not raw.startswith(prefix):  # an encoded prefix (`/api/v1/%61ms`) must not shift the path
        raise BadRequest("The path is not in canonical form.", param="path")
    rest = raw[len(prefix) :].removeprefix("/")
    segments = rest.split("/") if rest else []
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash is harmless
    decoded: list[str] = []
    for raw in segments:
        segment = unquote(raw)
        if segment in ("", ".", "..") or "/" in segment or "\\" in segment or _CONTROL.search(segment):
            raise BadRequest("The path holds a segment that is not allowed.", param="path")
        decoded.append(segment)
    return decoded


def join_path(segments: list[str]) -> str:
    return "".join("/" + quote(segment, safe="") for segment in segments)


@dataclass
class UpstreamCall:
    """One request to pass on: built by the route, possibly rewritten by a guard."""

    method: str
    segments: list[str]
    query: str
    headers: dict[str, str]
    body: bytes | None = None  # a JSON body read whole (so a guard can check and rewrite it)
    stream_body: CappedUpload | None = None  # an upload, passed on as it arrives


class ServiceProxy:
    """One upstream service behind a path prefix, e.g. Letta's `/v1`."""

    def __init__(
        self,
        client: UpstreamClient,
        prefix: str,
        breaker: CircuitBreaker,
        header_timeout: float,
        idle_timeout: float,
        streams: StreamRegistry,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.breaker = breaker
        self.header_timeout = header_timeout
        self.streams = streams
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=header_timeout, sock_read=idle_timeout)

    @property
    def name(self) -> str:
        return self.client.name

    async def open(self, call: UpstreamCall) -> aiohttp.ClientResponse:
        """Send `call`; the response headers are in, the body is still to read. Raises 502/503/504."""
        self.breaker.before_call()
        url = self.client.base_url + self.prefix + join_path(call.segments) + (f"?{call.query}" if call.query else "")
        upload = call.stream_body
        data: bytes | AsyncIterator[bytes] | None = upload.chunks() if upload is not None else call.body
        started = time.perf_counter()
        # Headers must come within REQUEST_TIMEOUT; an upload's own sending time is not limited.
        within = None if upload is not None else self.header_timeout
        try:
            async with asyncio.timeout(within):
                response = await self.client.session.request(
                    call.method, url, headers=call.headers, data=data, timeout=self._timeout, allow_redirects=False
                )
        except (aiohttp.ClientError, TimeoutError, OSError, GatewayError) as exc:
            if upload is not None and upload.refused is not None:
                self.breaker.release_probe()  # the client's upload was refused: not the service's fault
                raise upload.refused from None
            if isinstance(exc, GatewayError):
                self.breaker.release_probe()
                raise
            self.breaker.failed()
            raise map_client_error(exc, self.name) from None
        metrics.child(metrics.UPSTREAM_LATENCY, self.name).observe(time.perf_counter() - started)
        has_body = response.content_length not in (None, 0) or response.headers.get("transfer-encoding") == "chunked"
        if counts_as_failure(response.status, has_error_body=has_body):
            self.breaker.failed()
        else:
            self.breaker.succeeded()
        return response

    async def relay(
        self, response: aiohttp.ClientResponse, send: Send, extra: Headers, request_id: str, receive: Receive
    ) -> None:
        """Stream `response` to the client as it arrives; stop reading when the client leaves."""
        headers = [(name.lower(), value) for name, value in response.raw_headers if name.lower() in _RESPONSE_HEADERS]
        if response.content_type == "text/event-stream":
            headers += [(b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": response.status, "headers": headers + extra})
        watcher = asyncio.create_task(_close_when_client_leaves(receive, response))
        self.streams.active.add(response)
        try:
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response.content_type == "text/event-stream" and not watcher.done():
                error = (
                    ServiceUnavailable("The gateway is shutting down.")
                    if self.streams.cut_off
                    else map_client_error(exc, self.name)
                )
                event = sse_error_event(error, request_id)
                await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            self.streams.active.discard(response)
            watcher.cancel()
            response.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def forwarded_headers(headers: Headers) -> dict[str, str]:
    """The client's headers that may go upstream; credentials are added by the caller."""
    return {name.decode(): value.decode("latin-1") for name, value in headers if name in _REQUEST_HEADERS}


class CappedUpload:
    """The request body as it arrives, cut past `cap` bytes. aiohttp wraps what the body raises,
    so the refusal is kept here too, for the proxy to answer 413 rather than 502."""

    def __init__(self, receive: Receive, cap: int) -> None:
        self.receive = receive
        self.cap = cap
        self.refused: GatewayError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # A cut-off upload must not reach the service as if it were whole.
                self.refused = BadRequest("The client went away before sending the whole body.")
                raise self.refused
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.cap:
                self.refused = BodyTooLarge()
                raise self.refused
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


async def _close_when_client_leaves(receive: Receive, response: aiohttp.ClientResponse) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.close()
