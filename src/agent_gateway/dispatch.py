"""The gateway as one ASGI callable: a lean hand-written path for the LLM and frontend routes,
FastAPI for the rest.

Every request gets an id, an in-flight slot, a metric and an access-log line, and goes to its
handler by prefix: `/api/v1/agents/…` to the LLM relay (no framework on the hot path), the
frontend prefixes to their routes behind CORS, all else to the ops app (docs, health,
metrics, admin). Handlers raise what they refuse; this is the one place that turns a
`GatewayError` into an answer, and only while no answer has started (after that, a stream's
pump has said it in an SSE event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent_gateway.asgi import send_error
from agent_gateway.errors import GatewayError, MethodNotAllowed, NotFound, Overloaded, ServerError
from agent_gateway.frontend.routes import FrontendRoutes, is_frontend_path
from agent_gateway.llm.context import RequestContext
from agent_gateway.llm.relay import AgentRelay, LLMRoute
from agent_gateway.llm.routes import AGENT_PREFIX, match_agent_path
from agent_gateway.ops import metrics, tracing
from agent_gateway.streaming import StreamRegistry
from agent_gateway.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("agent_gateway.access")
log = logging.getLogger("agent_gateway")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ALWAYS_SERVED = frozenset({"/ping", "/health", "/metrics"})
Wrap = Callable[[ASGIApp], ASGIApp]  # what a route family's answers pass through (the frontend's CORS)


@dataclass
class Exchange:
    """One request as the access log and the metrics see it."""

    request_id: str
    route: str = "unmatched"  # the route's template: never a user's own path
    ctx: RequestContext | None = None
    status: int = 0


@dataclass
class Lifecycle:
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    grace_seconds: float
    exit_code: Callable[[], int] = lambda: 0  # after the stop: non-zero if it left work undone


class Gateway:
    def __init__(
        self,
        *,
        agent_routes: dict[str, LLMRoute],
        relay: AgentRelay,
        frontend: FrontendRoutes,
        cors: Wrap,
        ops: ASGIApp,
        streams: StreamRegistry,
        lifecycle: Lifecycle,
        max_in_flight: int,
    ) -> None:
        self.agent_routes = agent_routes
        self.relay = relay
        self.frontend = frontend
        self.cors = cors
        self.ops = ops
        self.streams = streams
        self.lifecycle = lifecycle
        self.max_in_flight = max_in_flight
        self.draining = False
        self.in_flight = 0
        metrics.IN_FLIGHT.set_function(lambda: self.in_flight)  # read when scraped, not per request
        self._frontend_app = cors(self._serve_frontend)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            tracer = tracing.active
            if tracer is None:
                await self._serve_http(scope, receive, send)
                return
            with tracer.request(scope) as span:
                try:
                    await self._serve_http(scope, receive, send)
                finally:  # a request cancelled mid-stream still gets its route's name
                    exchange = scope["state"]["exchange"]
                    tracer.answered(span, scope["method"], exchange.route, exchange.status)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        exchange = Exchange(_request_id(scope["headers"]))
        scope.setdefault("state", {})["exchange"] = exchange
        scope["state"]["request_id"] = exchange.request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", exchange.request_id.encode())]
            await send(message)

        path: str = scope["path"]
        frontend = is_frontend_path(path)
        # Probes and metrics are never refused: an overloaded gateway must not look dead.
        if self.in_flight >= self.max_in_flight and path not in _ALWAYS_SERVED:
            await self._answer(Overloaded(), scope, receive, send_with_id, exchange, frontend)
            self._record(exchange, status, started)
            return
        self.in_flight += 1
        try:
            if path.startswith(AGENT_PREFIX):
                await self._serve_agent(scope, receive, send_with_id, exchange)
            elif frontend:
                await self._frontend_app(scope, receive, send_with_id)
            else:
                await self.ops(scope, receive, send_with_id)
                exchange.route = getattr(scope.get("route"), "path", exchange.route)
        except GatewayError as error:
            if response_started:
                log.warning("refused after the answer began", extra={"request_id": exchange.request_id})
            else:
                await self._answer(error, scope, receive, send_with_id, exchange, frontend)
        except Exception:
            log.exception("unhandled error", extra={"request_id": exchange.request_id, "route": exchange.route})
            if not response_started:
                await self._answer(ServerError(), scope, receive, send_with_id, exchange, frontend)
        finally:
            self.in_flight -= 1
            self._record(exchange, status, started)
            # The server keeps a connection's last scope until its next request: let the call go now.
            exchange.ctx = None

    async def _answer(
        self, error: GatewayError, scope: Scope, receive: Receive, send: Send, exchange: Exchange, frontend: bool
    ) -> None:
        """The one place a refusal becomes an answer (SPEC §8), with the CORS headers of its route family."""
        extra = exchange.ctx.response_headers if exchange.ctx is not None else None

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await send_error(send, error, exchange.request_id, extra)

        await (self.cors(answer) if frontend else answer)(scope, receive, send)

    async def _serve_agent(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        matched = match_agent_path(scope["path"])
        route = self.agent_routes.get(matched[1]) if matched else None
        if matched is None or route is None:
            raise NotFound()
        exchange.route = f"{AGENT_PREFIX}{{user_id}}/messages{matched[1]}"
        if scope["method"] != route.method:
            error = MethodNotAllowed()
            error.headers["Allow"] = route.method
            raise error
        client = scope.get("client")
        exchange.ctx = RequestContext(
            exchange.request_id, route.name, matched[0], scope["headers"], receive, client[0] if client else None
        )
        await self.relay.handle(route, exchange.ctx, send)

    async def _serve_frontend(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange = scope["state"]["exchange"]
        exchange.route = self.frontend.template(scope["path"])
        exchange.ctx = RequestContext(exchange.request_id, "frontend", "", scope["headers"], receive)
        await self.frontend.serve(scope, send, exchange.ctx)

    def _record(self, exchange: Exchange, status: int, started: float) -> None:
        exchange.status = status
        elapsed = time.perf_counter() - started
        metrics.child(metrics.REQUESTS, exchange.route, str(status)).inc()
        metrics.child(metrics.LATENCY, exchange.route).observe(elapsed)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "request_id": exchange.request_id,
            "route": exchange.route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        }
        ctx = exchange.ctx
        if ctx is not None:
            fields.update(user=ctx.user_id, model=ctx.model, upstream="litellm" if ctx.entry else None)
            if ctx.entry is not None:
                fields.update(tokens=ctx.entry.usage.total_tokens, estimated=ctx.entry.usage.estimated)
        access_log.info("request", extra=fields)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.lifecycle.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                self._install_drain_on_sigterm()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.streams.cut_all()
                await self.lifecycle.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def begin_drain(self) -> None:
        """SIGTERM: /health turns 503 at once; streams still running after the grace are ended."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"grace_seconds": self.lifecycle.grace_seconds})
        asyncio.get_running_loop().call_later(self.lifecycle.grace_seconds, self.streams.cut_all)

    def _install_drain_on_sigterm(self) -> None:
        # The server owns SIGTERM (it stops accepting and waits for requests); we chain onto
        # its handler so draining starts at the same moment, however the app is served.
        previous = signal.getsignal(signal.SIGTERM)
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(self.begin_drain)
            if callable(previous):
                previous(signum, frame)

        with contextlib.suppress(ValueError):  # not the main thread (an embedded server): no signals
            signal.signal(signal.SIGTERM, on_sigterm)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value.decode()
    return os.urandom(16).hex()
