"""Pass-through to the platform's other services (Letta, AMS), SPEC §6.

A `ServiceProxy` is one service behind a path prefix: Letta's `/v1` at `/api/v1/letta`. It
sends a checked call through the upstream boundary under the service's breaker, and relays
the answer back as it arrives (SSE included) through the one stream pump. Headers go by
allow-list both ways; a redirect is rewritten onto the gateway's own route or refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from agent_gateway import headers
from agent_gateway.errors import UpstreamError
from agent_gateway.frontend.paths import join_path
from agent_gateway.streaming import StreamPump
from agent_gateway.types import Headers, Receive, Send
from agent_gateway.upstream.breaker import CircuitBreaker
from agent_gateway.upstream.client import UpstreamClient, UpstreamResponse


@dataclass
class ServiceCall:
    """One request to pass on: built by the route, possibly rewritten by a guard."""

    method: str
    segments: list[str]
    query: str
    headers: dict[str, str]
    body: bytes | None = None  # a JSON body read whole (so a guard can check and rewrite it)
    upload: AsyncIterator[bytes] | None = None  # an upload, passed on as it arrives


class ServiceProxy:
    def __init__(
        self,
        client: UpstreamClient,
        upstream_prefix: str,
        public_prefix: str,
        breaker: CircuitBreaker,
        pump: StreamPump,
        *,
        header_timeout: float,
        idle_timeout: float,
        turn_timeout: float,
    ) -> None:
        self.client = client
        self.upstream_prefix = upstream_prefix.rstrip("/")
        self.public_prefix = public_prefix
        self.breaker = breaker
        self.pump = pump
        self.header_timeout = header_timeout
        # An agent turn holds several LLM calls: it may take as long as one LLM answer may.
        self.turn_timeout = turn_timeout
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=header_timeout, sock_read=idle_timeout)
        self._turn = aiohttp.ClientTimeout(total=None, sock_connect=header_timeout, sock_read=turn_timeout)

    @property
    def name(self) -> str:
        return self.client.name

    async def open(self, call: ServiceCall, user: str | None = None, turn: bool = False) -> UpstreamResponse:
        """Send `call` for `user`; the answer's headers are in, its body still to read. Raises 502/503/504."""
        self.breaker.before_call()
        path = self.upstream_prefix + join_path(call.segments) + (f"?{call.query}" if call.query else "")
        # Headers must come within REQUEST_TIMEOUT (a turn: LLM_TIMEOUT); an upload's own sending
        # time is not limited.
        within = None if call.upload is not None else self.turn_timeout if turn else self.header_timeout
        return await self.client.open(
            call.method,
            path,
            headers=call.headers,
            body=call.upload if call.upload is not None else call.body,
            timeout=self._turn if turn else self._timeout,
            headers_within=within,
            breaker=self.breaker,
            user=user,
        )

    async def get_json(self, path: str, query: dict[str, str] | None, auth: dict[str, str]) -> tuple[int, Any]:
        """A GET of the gateway's own (an ownership lookup), under the service's breaker."""
        segments = [part for part in path.split("/") if part] + ([""] if path.endswith("/") else [])
        response = await self.open(ServiceCall("GET", segments, urlencode(query or {}), dict(auth)))
        return response.status, await response.json()

    def public_location(self, location: str) -> str | None:
        """A redirect's target as the client must see it: under the gateway's own prefix, or None."""
        base = self.client.base_url + self.upstream_prefix
        target = location.removeprefix(base) if location.startswith(base + "/") else None
        if target is None and location.startswith(self.upstream_prefix + "/"):
            target = location.removeprefix(self.upstream_prefix)
        return None if target is None else self.public_prefix + target

    async def relay(
        self, response: UpstreamResponse, send: Send, extra: Headers, request_id: str, receive: Receive
    ) -> None:
        """Stream `response` to the client as it arrives; stop reading when the client leaves."""
        answer = headers.to_client(response.raw_headers, headers.SERVICE_TO_CLIENT)
        if 300 <= response.status < 400:
            # Never an upstream address: the redirect is rewritten onto the gateway, or refused.
            location = self.public_location(response.header("location") or "")
            if location is None:
                response.release()
                raise UpstreamError(f"{self.name} redirected outside its own routes.")
            answer.append((b"location", location.encode("latin-1")))
        sse = response.content_type == "text/event-stream"
        if sse:
            answer.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": response.status, "headers": answer + extra})
        await self.pump.run(response, send, receive, request_id, error_events=sse)
