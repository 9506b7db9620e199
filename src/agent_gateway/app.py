"""The gateway as one ASGI app: a lean hand-written path for agent LLM calls, FastAPI for the rest.

`Gateway.__call__` gives every request an id, an in-flight slot, a metric and an access-log
line, then dispatches: `/api/v1/agents/…` to the relay (no framework on the hot path), all
else to the FastAPI app in `ops.py` (docs, health, metrics, admin).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware

from agent_gateway import metrics
from agent_gateway.asgi import send_error
from agent_gateway.auth.jwt import JWTVerifier
from agent_gateway.breaker import Breakers
from agent_gateway.cache import ResponseCache
from agent_gateway.context import RequestContext
from agent_gateway.errors import MethodNotAllowed, NotFound, Overloaded, ServerError, UpstreamError
from agent_gateway.frontend import FrontendRoutes, is_frontend_path
from agent_gateway.letta import LettaGuard
from agent_gateway.limits.budget import Budgets, MemoryBudgets, RedisBudgets
from agent_gateway.limits.rate import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from agent_gateway.passthrough import ServiceProxy, UpstreamCall
from agent_gateway.policies.jwt import JWTPolicy
from agent_gateway.policies.rate_limit import RateLimitPolicy
from agent_gateway.relay import AgentRelay
from agent_gateway.routes import AGENT_PREFIX, build_agent_routes, build_llm_routes, match_agent_path
from agent_gateway.settings import Settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.postgrest import PostgrestProfileSource
from agent_gateway.stores.profile_cache import ProfileCache, listen_for_changes
from agent_gateway.stores.profiles import ProfileStore
from agent_gateway.types import ASGIApp, Message, Receive, Scope, Send
from agent_gateway.upstream import UpstreamClient

access_log = logging.getLogger("agent_gateway.access")
log = logging.getLogger("agent_gateway")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ALWAYS_SERVED = frozenset({"/ping", "/health", "/metrics"})


def connect_redis(settings: Settings, timeout: float | None, **options: Any) -> Redis | None:
    """A client for `REDIS_URL` whose calls give up after `timeout` seconds (None: never)."""
    if not settings.redis_url:
        return None
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis.from_url(settings.redis_url, password=password, socket_timeout=timeout, socket_connect_timeout=timeout)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        from agent_gateway.ops import build_ops_app  # ops imports Gateway for typing only

        self.settings = settings
        self.database = Database(settings.database_url)
        self.redis = connect_redis(settings, settings.redis_timeout)  # then LIMITS_FAIL_MODE applies
        self.profile_store = ProfileStore(self.database)
        self.profiles = ProfileCache(self.profile_store)
        self.limiter: RateLimiter = (
            RedisRateLimiter(self.redis, settings.limits_fail_mode) if self.redis else MemoryRateLimiter()
        )
        self.ledger = Ledger(self.database)
        # A reservation outlives any call that can still be running, then frees itself.
        reservation_ttl = settings.llm_timeout + settings.stream_drain_seconds + settings.shutdown_grace_seconds + 60
        self.budgets: Budgets = (
            RedisBudgets(self.redis, self.ledger.month_used, reservation_ttl, settings.limits_fail_mode)
            if self.redis
            else MemoryBudgets(self.ledger.month_used)
        )
        self.breakers = Breakers(settings.breaker_threshold, settings.breaker_cooldown_seconds)
        self.litellm = UpstreamClient("litellm", settings.litellm_base_url)
        self.relay = AgentRelay(settings, self.litellm, self.ledger, self.breakers)
        self.agent_routes = build_agent_routes(settings, self.profiles, self.limiter, self.budgets)
        self.upstreams = [self.litellm]
        self.frontend = self._build_frontend()
        self.ops = build_ops_app(self)
        self.draining = False
        self.in_flight = 0
        self.last_health: tuple[float, dict[str, Any]] | None = None
        metrics.IN_FLIGHT.set_function(lambda: self.in_flight)  # read when scraped, not per request
        self._background: list[asyncio.Task[None]] = []

    def _build_frontend(self) -> ASGIApp:
        settings = self.settings
        self.supabase = UpstreamClient("supabase", settings.supabase_url or "http://127.0.0.1")
        self.jwt = JWTPolicy(None)  # its verifier needs the HTTP session: made in startup()
        self.letta = self.ams = None
        if settings.letta_base_url:
            self.letta = UpstreamClient("letta", settings.letta_base_url)
        if settings.ams_base_url:
            self.ams = UpstreamClient("ams", settings.ams_base_url)
        self.upstreams += [client for client in (self.supabase, self.letta, self.ams) if client is not None]
        streams, idle = self.relay.streams, settings.stream_idle_timeout
        ams_proxy = (
            ServiceProxy(self.ams, "", self.breakers.get("ams"), settings.request_timeout, idle, streams)
            if self.ams
            else None
        )
        letta = None
        if self.letta is not None:
            api_key = settings.letta_api_key.get_secret_value() if settings.letta_api_key else None
            agent_ids = self._ams_agent_ids if settings.letta_ownership == "ams" and ams_proxy else None
            guard = LettaGuard(self.letta, api_key, settings.public_base_url, agent_ids)
            proxy = ServiceProxy(self.letta, "/v1", self.breakers.get("letta"), settings.request_timeout, idle, streams)
            letta = (proxy, guard)
        self.ams_proxy = ams_proxy
        self.cache = ResponseCache(self.redis)
        routes = FrontendRoutes(
            relay=self.relay,
            llm_routes=build_llm_routes(settings, self.jwt, self.profiles, self.limiter, self.budgets),
            gate=[self.jwt, RateLimitPolicy(self.limiter, settings.rate_limit_general, scope="general")],
            letta=letta,
            ams=ams_proxy,
            ledger=self.ledger,
            profiles=self.profiles,
            cache=self.cache,
            max_body_bytes=settings.max_body_bytes,
            max_upload_bytes=settings.max_upload_bytes,
        )

        async def frontend(scope: Scope, receive: Receive, send: Send) -> None:
            state = scope["state"]
            state["route"], state["ctx"] = await routes.serve(scope, receive, send, state["request_id"])

        origins = list(settings.allowed_origins)
        return CORSMiddleware(
            frontend,
            allow_origins=origins,
            allow_credentials="*" not in origins,  # credentials only with explicit origins
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
            max_age=600,
        )

    async def _ams_agent_ids(self, user_id: str, token: str | None) -> set[str]:
        """The agent ids AMS lists for `user_id` (LETTA_OWNERSHIP=ams), cached briefly."""
        cached = await self.cache.get(user_id, "ams-agents")
        if cached is not None:
            return set(orjson.loads(cached[1]))
        assert self.ams_proxy is not None
        headers = {"X-User-ID": user_id, "Authorization": f"Bearer {token}"}
        call = UpstreamCall("GET", ["me"], "", headers)
        response = await self.ams_proxy.open(call)
        async with response:
            me = await response.json(content_type=None) if response.status == 200 else None
        if not isinstance(me, dict):  # not cached: an AMS hiccup must not lock users out
            raise UpstreamError("AMS could not say which agents are yours.")
        agents = me.get("agents") or me.get("agent_ids") or []
        ids = {str(a.get("id")) if isinstance(a, dict) else str(a) for a in agents if a}
        await self.cache.put(user_id, "ams-agents", (b"application/json", orjson.dumps(sorted(ids))), 10.0)
        return ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._serve_http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        route = "unmatched"
        ctx: RequestContext | None = None
        # Probes and metrics are never refused: an overloaded gateway must not look dead.
        if self.in_flight >= self.settings.max_concurrent_requests and scope["path"] not in _ALWAYS_SERVED:
            await send_error(send_with_id, Overloaded(), request_id)
            self._record(route, status, started, request_id, None)
            return
        self.in_flight += 1
        try:
            if scope["path"].startswith(AGENT_PREFIX):
                route, ctx = await self._serve_agent(scope, receive, send_with_id, request_id)
            elif is_frontend_path(scope["path"]):
                await self.frontend(scope, receive, send_with_id)
                route, ctx = scope["state"].get("route", "preflight"), scope["state"].get("ctx")
            else:
                await self.ops(scope, receive, send_with_id)
                matched = scope.get("route")
                route = getattr(matched, "path", route)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id, "route": route})
            if not response_started:
                await send_error(send_with_id, ServerError(), request_id)
        finally:
            self.in_flight -= 1
            self._record(route, status, started, request_id, ctx)

    async def _serve_agent(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> tuple[str, RequestContext | None]:
        matched = match_agent_path(scope["path"])
        route = self.agent_routes.get(matched[1]) if matched else None
        if matched is None or route is None:
            await send_error(send, NotFound(), request_id)
            return "unmatched", None
        template = f"{AGENT_PREFIX}{{user_id}}/messages{matched[1]}"
        if scope["method"] != route.method:
            await send_error(send, MethodNotAllowed(), request_id, [(b"allow", route.method.encode())])
            return template, None
        ctx = RequestContext(request_id, route.name, matched[0], scope["headers"], receive)
        await self.relay.handle(route, ctx, send)
        return template, ctx

    def _record(self, route: str, status: int, started: float, request_id: str, ctx: RequestContext | None) -> None:
        elapsed = time.perf_counter() - started
        metrics.child(metrics.REQUESTS, route, str(status)).inc()
        metrics.child(metrics.LATENCY, route).observe(elapsed)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "request_id": request_id,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        }
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
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.database.start()
        await self.ledger.start()
        for client in self.upstreams:
            await client.start()
        settings = self.settings
        if settings.supabase_url or settings.supabase_jwt_secret:
            secret = settings.supabase_jwt_secret.get_secret_value() if settings.supabase_jwt_secret else None
            self.jwt.verifier = JWTVerifier(settings.supabase_url, secret, self.supabase.session)
        if settings.supabase_url and settings.supabase_service_role_key:
            key = settings.supabase_service_role_key.get_secret_value()
            self.profiles.source = PostgrestProfileSource(settings.supabase_url, key, self.supabase.session)
        if self.settings.redis_url:
            listener = connect_redis(self.settings, timeout=None, health_check_interval=30)
            assert listener is not None
            self._background.append(asyncio.create_task(listen_for_changes(listener, self.profiles)))
        self._install_drain_on_sigterm()
        # Everything built so far lives as long as the process: keep the collector off it.
        gc.collect()
        gc.freeze()
        log.info("gateway started", extra={"pid": os.getpid(), "database": self.database.dialect})

    async def shutdown(self) -> None:
        self.relay.streams.cut_all()
        for task in self._background:
            task.cancel()
        if self._background:  # a listener stuck in a reconnect must not hold the shutdown
            await asyncio.wait(self._background, timeout=2.0)
        await self.ledger.close()
        for client in self.upstreams:
            await client.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.database.close()
        log.info("gateway stopped")

    def begin_drain(self) -> None:
        """SIGTERM: /health turns 503 at once; streams still running after the grace are ended."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"grace_seconds": self.settings.shutdown_grace_seconds})
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.shutdown_grace_seconds, self.relay.streams.cut_all)

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


def create_app() -> Gateway:
    """Factory for `uvicorn --factory agent_gateway.app:create_app` and for WORKERS > 1."""
    from agent_gateway.logs import configure_logging
    from agent_gateway.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    return Gateway(settings)
