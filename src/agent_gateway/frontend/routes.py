"""The web frontend's routes (SPEC §6), behind a Supabase access token and CORS.

/api/v1/llm/{chat/completions,responses,embeddings,models}  the §5 pipeline, user = `sub`
/api/v1/me                                                   AMS `/me`, or the gateway's own view
/api/v1/letta/{path}, /api/v1/ams/{path}                     the services of `services.py`

Every handler raises what it refuses; the dispatcher renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_gateway import headers
from agent_gateway.asgi import BodyDeadline, capped_body, read_body, send_bytes, send_json
from agent_gateway.domain import this_month
from agent_gateway.errors import (
    AlreadyExists,
    BadRequest,
    BodyTooLarge,
    MethodNotAllowed,
    NotFound,
    UpstreamError,
    UserNotFound,
)
from agent_gateway.frontend.letta import local
from agent_gateway.frontend.letta.guard import LettaGuard, Plan
from agent_gateway.frontend.letta.rules import Answer
from agent_gateway.frontend.passthrough import ServiceCall, ServiceProxy
from agent_gateway.frontend.paths import split_path
from agent_gateway.frontend.services import SERVICES, ServiceSpec
from agent_gateway.llm.context import RequestContext
from agent_gateway.llm.relay import AgentRelay, LLMRoute
from agent_gateway.llm.routes import LLM_PREFIX
from agent_gateway.policies import Chain
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.profile_cache import ProfileCache
from agent_gateway.stores.response_cache import ResponseCache
from agent_gateway.types import Scope, Send

ME_PATH = "/api/v1/me"
ME_CACHE_SECONDS = 10.0
_SERVICE_PREFIXES = tuple(spec.public_prefix + "/" for spec in SERVICES)


def is_frontend_path(path: str) -> bool:
    return path == ME_PATH or path.startswith((LLM_PREFIX + "/", *_SERVICE_PREFIXES))


@dataclass
class Service:
    spec: ServiceSpec
    proxy: ServiceProxy
    guard: LettaGuard | None = None  # Letta's; without one, the call goes as the user (their own token)


class FrontendRoutes:
    def __init__(
        self,
        *,
        relay: AgentRelay,
        llm_routes: dict[str, LLMRoute],
        gate: Chain,
        services: dict[str, Service],
        ledger: Ledger,
        profiles: ProfileCache,
        cache: ResponseCache,
        max_body_bytes: int,
        max_upload_bytes: int,
        body_deadline: BodyDeadline,
    ) -> None:
        self.relay = relay
        self.llm_routes = llm_routes
        self.gate = gate  # the user's token, then RATE_LIMIT_GENERAL
        self.services = services
        self.ledger = ledger
        self.profiles = profiles
        self.cache = cache
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.body_deadline = body_deadline

    def template(self, path: str) -> str:
        """The route's template, for metrics and logs: never a user's own path."""
        if path.startswith(LLM_PREFIX + "/"):
            suffix = path[len(LLM_PREFIX) :].rstrip("/")
            return LLM_PREFIX + suffix if suffix in self.llm_routes else "unmatched"
        if path == ME_PATH:
            return ME_PATH
        spec = next(spec for spec in SERVICES if path.startswith(spec.public_prefix + "/"))
        return f"{spec.public_prefix}/{{path}}"

    async def serve(self, scope: Scope, send: Send, ctx: RequestContext) -> None:
        path: str = scope["path"]
        if path.startswith(LLM_PREFIX + "/"):
            await self._llm(path[len(LLM_PREFIX) :].rstrip("/"), scope, ctx, send)
        elif path == ME_PATH:
            await self._me(scope, ctx, send)
        else:
            spec = next(spec for spec in SERVICES if path.startswith(spec.public_prefix + "/"))
            service = self.services.get(spec.name)
            if service is None:
                raise NotFound(f"The {spec.name} route is not configured.")
            await self._passthrough(service, scope, ctx, send)

    async def _llm(self, suffix: str, scope: Scope, ctx: RequestContext, send: Send) -> None:
        route = self.llm_routes.get(suffix)
        if route is None:
            raise NotFound()
        if scope["method"] != route.method:
            raise MethodNotAllowed()
        ctx.route = route.name
        await self.relay.handle(route, ctx, send)

    async def _me(self, scope: Scope, ctx: RequestContext, send: Send) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed()
        async with self.gate.admit(ctx):
            cached = await self.cache.get(ctx.user_id, "me")
            if cached is not None:
                answer = [(b"content-type", cached[0]), (b"x-cache", b"hit")]
                await send_bytes(send, 200, answer + ctx.response_headers, cached[1])
                return
            ams = self.services.get("ams")
            if ams is not None:
                call = ServiceCall("GET", ["me"], "", self._as_user(ctx, {}))
                response = await ams.proxy.open(call, user=ctx.user_id)
                body = await response.read()
                content_type = (response.header("content-type") or "application/json").encode()
                if response.status == 200:
                    await self.cache.put(ctx.user_id, "me", (content_type, body), ME_CACHE_SECONDS)
                await send_bytes(send, response.status, [(b"content-type", content_type)] + ctx.response_headers, body)
                return
            await send_json(send, 200, await self._own_view(ctx.user_id), ctx.response_headers)

    async def _own_view(self, user_id: str) -> dict[str, Any]:
        profile = await self.profiles.get(user_id)
        month = this_month()
        totals = await self.ledger.month_totals(month, user_id)
        allowed = profile.allowed_models if profile is not None else None
        return {
            "id": user_id,
            "allowed_models": sorted(allowed) if allowed is not None else None,
            "monthly_limit": profile.monthly_limit if profile else None,
            "usage": {"month": month, "total_tokens": totals[0]["total_tokens"] if totals else 0},
        }

    def _as_user(self, ctx: RequestContext, forwarded: dict[str, str]) -> dict[str, str]:
        return headers.as_user(forwarded, ctx.token or "", ctx.user_id, ctx.request_id)

    async def _passthrough(self, service: Service, scope: Scope, ctx: RequestContext, send: Send) -> None:
        async with self.gate.admit(ctx):
            call = await self._call(service, scope, ctx)
            plan = None
            if service.guard is not None:
                plan = await service.guard.plan(ctx.user_id, call, ctx.token)
                if plan.rule.local:
                    await send_json(send, 200, await self._letta_local(service.guard, plan, ctx), ctx.response_headers)
                    return
            else:
                self._as_user(ctx, call.headers)
            turn = plan is not None and plan.rule.turn
            response = await service.proxy.open(call, user=ctx.user_id, turn=turn)
            if plan is not None and response.status == 409:
                response.release()
                raise AlreadyExists()
            edit = plan.edit if plan is not None else None
            if edit is not None and response.status < 300 and response.content_type == "application/json":
                answer = await response.json()
                if answer is None:
                    raise UpstreamError(f"{service.proxy.name} sent a malformed answer.")
                await send_json(send, response.status, await edit(answer), ctx.response_headers)
                return
            await service.proxy.relay(response, send, ctx.response_headers, ctx.request_id, ctx.receive)

    async def _call(self, service: Service, scope: Scope, ctx: RequestContext) -> ServiceCall:
        """The call as the client sent it: checked path, allowed headers, and the body read or streamed."""
        segments = split_path(scope.get("raw_path") or scope["path"].encode(), service.spec.public_prefix)
        forwarded = headers.from_client(ctx.headers, headers.CLIENT_TO_SERVICE)
        forwarded["X-Request-ID"] = ctx.request_id
        call = ServiceCall(scope["method"], segments, scope.get("query_string", b"").decode("latin-1"), forwarded)
        content_types = [value.lower() for name, value in ctx.headers if name == b"content-type"]
        if len(content_types) > 1:  # what we inspect must be what the upstream reads
            raise BadRequest("Send one Content-Type header.")
        declared = ctx.header(b"content-length")
        is_upload = service.spec.uploads_anywhere or (bool(segments) and segments[-1] == "upload")
        if content_types and content_types[0].startswith(b"multipart/") and is_upload:
            if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
                raise BodyTooLarge()
            call.upload = capped_body(ctx.receive, self.max_upload_bytes, self.body_deadline)
        elif call.method in ("POST", "PUT", "PATCH"):
            call.body = await read_body(ctx.receive, self.max_body_bytes, declared, self.body_deadline)
        return call

    async def _letta_local(self, guard: LettaGuard, plan: Plan, ctx: RequestContext) -> Any:
        """The Letta routes the gateway answers itself (`letta/local.py`)."""
        answer = plan.rule.answer
        if answer in (Answer.MODELS, Answer.EMBEDDING_MODELS):
            profile = await self.profiles.get(ctx.user_id)
            if profile is None or not profile.litellm_key:
                raise UserNotFound()
            info = await self.relay.model_info(profile.litellm_key)
            return local.models(answer, profile.allowed_models, info, guard.endpoint(ctx.user_id))
        return await local.count(answer, plan.rule.path[0], guard.owners.fetch, ctx.user_id)
