"""The composition root: `build_gateway(settings)` makes every part once and wires them together.

Nothing here serves a request; `dispatch.Gateway` does, with what this module hands it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware

from agent_gateway.asgi import BodyDeadline
from agent_gateway.auth.jwt import JWTVerifier
from agent_gateway.deadlines import ClientDeadlinesProtocol
from agent_gateway.dispatch import Gateway, Lifecycle
from agent_gateway.frontend.ams import AmsAgents
from agent_gateway.frontend.letta.guard import LettaGuard
from agent_gateway.frontend.letta.ownership import Owners
from agent_gateway.frontend.letta.preflight import TurnPreflight
from agent_gateway.frontend.passthrough import ServiceProxy
from agent_gateway.frontend.routes import FrontendRoutes, Service
from agent_gateway.frontend.services import AMS, LETTA, SERVICES
from agent_gateway.limits.budget import Budgets, MemoryBudgets, RedisBudgets
from agent_gateway.limits.concurrency import InFlight
from agent_gateway.limits.rate import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from agent_gateway.limits.redis import connect_redis
from agent_gateway.limits.shared_month import SharedMonthBudgets
from agent_gateway.llm.relay import AgentRelay
from agent_gateway.llm.routes import AGENT_PREFIX, LLM_PREFIX, LimitState, build_agent_routes, build_llm_routes
from agent_gateway.ops import openapi, tracing
from agent_gateway.ops.admin import instance_status
from agent_gateway.ops.admin_page import AdminSessions
from agent_gateway.ops.app import build_ops_app
from agent_gateway.ops.health import HealthChecks, http_probe
from agent_gateway.ops.users import users_for
from agent_gateway.policies import Chain
from agent_gateway.policies.concurrency import ConcurrencyPolicy
from agent_gateway.policies.jwt import JWTPolicy
from agent_gateway.policies.rate_limit import RateLimitPolicy
from agent_gateway.policies.secret import SecretPolicy
from agent_gateway.settings import Settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.instances import Instances
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.letta_objects import LettaObjects
from agent_gateway.stores.outbox import Outbox
from agent_gateway.stores.postgrest import PostgrestProfileSource
from agent_gateway.stores.profile_cache import ProfileCache
from agent_gateway.stores.profile_changes import (
    ChangeLog,
    ChangeNotices,
    Forgetting,
    follow_changes,
    listen_for_changes,
)
from agent_gateway.stores.profiles import ProfileStore
from agent_gateway.stores.response_cache import ResponseCache
from agent_gateway.stores.token_versions import TokenVersions
from agent_gateway.streaming import StreamPump, StreamRegistry
from agent_gateway.types import ASGIApp
from agent_gateway.upstream.breaker import Breakers
from agent_gateway.upstream.client import UpstreamClient
from agent_gateway.upstream.litellm_admin import PriceList

log = logging.getLogger("agent_gateway")


class Platform:
    """The gateway's connections to everything around it: made here, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.database_url)
        self.redis = connect_redis(settings, settings.redis_timeout)  # then LIMITS_FAIL_MODE applies
        self.litellm = UpstreamClient("litellm", settings.litellm_base_url)
        root = settings.litellm_root_url
        self.litellm_root = self.litellm if root == settings.litellm_base_url else UpstreamClient("litellm", root)
        self.supabase = UpstreamClient("supabase", settings.supabase_url) if settings.supabase_url else None
        self.services = {
            spec.name: UpstreamClient(spec.name, url) for spec in SERVICES if (url := _service_url(settings, spec.name))
        }
        self.instances = Instances(self.database, settings.instance_heartbeat_seconds)
        self.ledger = Ledger(self.database, Outbox(settings.outbox_path), instances=self.instances)
        self.exit_code = 0  # non-zero when the stop left usage rows behind (in the outbox)
        self.breakers = Breakers(settings.breaker_threshold, settings.breaker_cooldown_seconds)
        self._background: list[asyncio.Task[None]] = []

    @property
    def clients(self) -> list[UpstreamClient]:
        roots = [self.litellm_root] if self.litellm_root is not self.litellm else []
        return [self.litellm, *roots, *([self.supabase] if self.supabase else []), *self.services.values()]

    def health_checks(self, is_draining: Any = lambda: False) -> HealthChecks:
        """Every configured dependency, probed the same way by `/health` and `agent-gateway check`."""
        redis = self.redis

        async def ping_redis() -> None:
            assert redis is not None
            await redis.ping()

        probes = {
            "database": self.database.ping,
            "redis": ping_redis if redis is not None else None,
            "litellm": http_probe(self.litellm_root, "/health/liveliness"),
            **{
                spec.name: _probe(self.services.get(spec.name), spec.health_path, self.service_auth(spec.name))
                for spec in SERVICES
            },
            "supabase": _probe(self.supabase, "/auth/v1/.well-known/jwks.json"),
        }
        return HealthChecks(probes, self.breakers, is_draining)

    def service_auth(self, name: str) -> dict[str, str]:
        """What the gateway itself sends a service: Letta's server password; AMS is reached as the user."""
        key = self.settings.letta_api_key if name == LETTA.name else None
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}

    async def start(self) -> None:
        await self.database.start()
        for client in self.clients:
            await client.start()

    async def start_serving(
        self, profiles: ProfileCache, versions: TokenVersions, background: list[Coroutine[Any, Any, None]]
    ) -> None:
        await self.start()
        await self.ledger.start()
        if tracing.start_from_environment() is not None:
            log.info("tracing to OTLP", extra={"endpoint": _otlp_endpoint()})
        self._background += [asyncio.create_task(work) for work in [self.ledger.keep_alive(), *background]]
        forgetting = Forgetting((profiles.invalidate, versions.invalidate), profiles.clear)
        changes = ChangeLog(self.database)
        poll = follow_changes(changes, forgetting, self.settings.profile_poll_seconds, await changes.latest())
        self._background.append(asyncio.create_task(poll))
        if self.settings.redis_url:
            listener = connect_redis(self.settings, timeout=None, health_check_interval=30)
            assert listener is not None
            self._background.append(asyncio.create_task(listen_for_changes(listener, forgetting)))
        # Everything built so far lives as long as the process: keep the collector off it.
        gc.collect()
        gc.freeze()
        if not self.settings.agent_secret_key and not self.settings.agent_token_key:
            log.warning("AGENT_SECRET_KEY is not set: every agent call will be refused with 401")
        if not self.settings.admin_api_key:
            log.warning("ADMIN_API_KEY is not set: the admin page (/admin) and the admin API are off")
        log.info("gateway started", extra={"pid": os.getpid(), "database": self.database.dialect})

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        if self._background:  # a listener stuck in a reconnect must not hold the shutdown
            await asyncio.wait(self._background, timeout=2.0)
        if await self.ledger.close():
            self.exit_code = 3
        for client in self.clients:
            await client.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.database.close()
        tracing.stop()
        log.info("gateway stopped")


def build_gateway(settings: Settings) -> Gateway:
    platform = Platform(settings)
    redis, ledger = platform.redis, platform.ledger
    profiles = ProfileCache(ProfileStore(platform.database, KeyCipher(settings.key_encryption_keys)))
    versions = TokenVersions(platform.database)
    if platform.supabase is not None and settings.supabase_service_role_key:
        profiles.source = PostgrestProfileSource(
            platform.supabase, settings.supabase_service_role_key.get_secret_value()
        )
    # A reservation, or a slot, outlives any call that can still be running, then frees itself.
    longest_call = settings.llm_timeout + settings.stream_drain_seconds + settings.shutdown_grace_seconds + 60
    limiter: RateLimiter = RedisRateLimiter(redis, settings.limits_fail_mode) if redis else MemoryRateLimiter()
    budgets: Budgets = (
        RedisBudgets(
            redis,
            ledger.month_used,
            longest_call,
            settings.limits_fail_mode,
            fallback=_shared(platform),
            in_flight=ledger.month_in_flight,
            instance=platform.instances.id,
        )
        if redis
        else MemoryBudgets(ledger.month_used)
    )
    if isinstance(budgets, RedisBudgets):
        ledger.on_dead = budgets.reclaim  # a crashed instance found by the ledger frees its reservations too
    in_flight = InFlight(settings.max_concurrent_per_user)
    state = LimitState(profiles, budgets, in_flight, platform.breakers)
    streams = StreamRegistry()
    pump = StreamPump(streams, settings.stream_drain_seconds, settings.stream_drain_bytes)
    cache = ResponseCache(redis)
    relay = AgentRelay(settings, platform.litellm, ledger, pump, cache)

    jwt = JWTPolicy(_verifier(settings, platform.supabase))
    secret = SecretPolicy(
        settings.agent_secrets,
        settings.token_keys,
        versions,
        tokens_only=settings.agent_tokens_only,
        networks=settings.agent_allowed_networks,
        proxies=settings.trusted_proxies,
    )
    agent_routes = build_agent_routes(settings, state, secret)
    llm_routes = build_llm_routes(settings, state, jwt)
    services = _services(settings, platform, pump, profiles, budgets, cache)
    frontend = FrontendRoutes(
        relay=relay,
        llm_routes=llm_routes,
        gate=Chain(
            [jwt, ConcurrencyPolicy(in_flight), RateLimitPolicy(limiter, settings.rate_limit_general, scope="general")]
        ),
        services=services,
        ledger=ledger,
        profiles=profiles,
        cache=cache,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        body_deadline=BodyDeadline(settings.body_timeout, settings.min_body_rate),
    )
    paths = {
        **openapi.llm_paths(f"{AGENT_PREFIX}{{user_id}}/messages", agent_routes, security="agentSecret", user=True),
        **openapi.llm_paths(LLM_PREFIX, llm_routes, security="supabaseToken", user=False),
        **openapi.service_paths(SERVICES),
    }
    gateway: Gateway | None = None
    health = platform.health_checks(lambda: gateway is not None and gateway.draining)
    # The admin API's changes apply to this instance's caches at once, and to the others through Redis or the log.
    notices = ChangeNotices(redis, local=(profiles.invalidate, versions.invalidate))
    users = users_for(settings, platform.database, notices, platform.litellm_root, platform.supabase)
    prices = PriceList(users.keys) if users.keys is not None else None
    status = instance_status(settings, platform.breakers, lambda: gateway.in_flight if gateway is not None else 0)
    sessions = (
        AdminSessions(settings.admin_api_key, secure=settings.environment in ("staging", "production"))
        if settings.admin_api_key is not None
        else None
    )
    ops = build_ops_app(health, ledger, settings.admin_api_key, paths, users, prices, status, sessions)

    async def start() -> None:
        await platform.start_serving(
            profiles, versions, [budgets.keep_fresh()] if isinstance(budgets, RedisBudgets) else []
        )

    gateway = Gateway(
        agent_routes=agent_routes,
        relay=relay,
        frontend=frontend,
        cors=_cors(settings),
        ops=ops,
        streams=streams,
        lifecycle=Lifecycle(start, platform.stop, settings.shutdown_grace_seconds, lambda: platform.exit_code),
        max_in_flight=settings.max_concurrent_requests,
    )
    return gateway


def _otlp_endpoint() -> str:
    """Where spans go, without any credentials a URL may hold."""
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else ""


def _shared(platform: Platform) -> Budgets | None:
    """Without Redis, instances on one PostgreSQL still share each month (SQLite: one process)."""
    if platform.database.dialect != "postgresql":
        return None
    local = MemoryBudgets(platform.ledger.month_used, reload_after=5.0)
    return SharedMonthBudgets(platform.database, local, platform.instances.id)


def _services(
    settings: Settings,
    platform: Platform,
    pump: StreamPump,
    profiles: ProfileCache,
    budgets: Budgets,
    cache: ResponseCache,
) -> dict[str, Service]:
    proxies = {
        spec.name: ServiceProxy(
            client,
            spec.upstream_prefix,
            spec.public_prefix,
            platform.breakers.get(spec.name),
            pump,
            header_timeout=settings.request_timeout,
            idle_timeout=settings.stream_idle_timeout,
            turn_timeout=settings.llm_timeout,
        )
        for spec in SERVICES
        if (client := platform.services.get(spec.name)) is not None
    }
    services = {name: Service(spec, proxies[name]) for spec in SERVICES if (name := spec.name) in proxies}
    letta = proxies.get(LETTA.name)
    if letta is not None:
        api_key = settings.letta_api_key.get_secret_value() if settings.letta_api_key else None
        auth = platform.service_auth(LETTA.name)
        ams = proxies.get(AMS.name)
        ams_agents = AmsAgents(ams, cache) if settings.letta_ownership == "ams" and ams is not None else None

        async def fetch(path: str, query: dict[str, str] | None) -> tuple[int, Any]:
            return await letta.get_json(path, query, auth)

        services[LETTA.name].guard = LettaGuard(
            Owners(fetch, LettaObjects(platform.database), ams_agents),
            api_key,
            settings.public_base_url,
            frozenset(settings.letta_allowed_tools),
            TurnPreflight(profiles, budgets, settings.default_reserve_tokens),
        )
    return services


def _service_url(settings: Settings, name: str) -> str | None:
    url: str | None = getattr(settings, f"{name}_base_url")
    return url


def _probe(client: UpstreamClient | None, path: str, headers: dict[str, str] | None = None) -> Any:
    return http_probe(client, path, headers) if client is not None else None


def _verifier(settings: Settings, supabase: UpstreamClient | None) -> JWTVerifier | None:
    if supabase is None and settings.supabase_jwt_secret is None:
        return None
    secret = settings.supabase_jwt_secret.get_secret_value() if settings.supabase_jwt_secret else None
    return JWTVerifier(supabase, secret)


def _cors(settings: Settings) -> Any:
    origins = list(settings.allowed_origins)

    def wrap(app: ASGIApp) -> ASGIApp:
        return CORSMiddleware(
            app,
            allow_origins=origins,
            allow_credentials="*" not in origins,  # credentials only with explicit origins
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
            max_age=600,
        )

    return wrap


def create_app() -> Gateway:
    """Factory for `uvicorn --factory agent_gateway.app:create_app` and for WORKERS > 1."""
    from agent_gateway.ops.logs import configure_logging
    from agent_gateway.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    ClientDeadlinesProtocol.configure(settings)  # a worker's own copy of the class, read per connection
    return build_gateway(settings)
