"""The web frontend's routes (SPEC §6), behind a Supabase access token and CORS.

/api/v1/llm/{chat/completions,responses,embeddings,models}  the §5 pipeline, user = `sub`
/api/v1/letta/{path}                                         Letta `/v1/{path}`, guarded
/api/v1/ams/{path}                                           AMS `/{path}`, as the user
/api/v1/me                                                   AMS `/me`, or the gateway's own view
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from agent_gateway.asgi import read_body, send_bytes, send_error, send_json
from agent_gateway.cache import ResponseCache
from agent_gateway.context import RequestContext
from agent_gateway.errors import BadRequest, BodyTooLarge, GatewayError, MethodNotAllowed, NotFound, UpstreamError
from agent_gateway.letta import LettaGuard, Verdict
from agent_gateway.passthrough import (
    CappedUpload,
    ServiceProxy,
    UpstreamCall,
    forwarded_headers,
    split_path,
)
from agent_gateway.policies import Policy, run_policies
from agent_gateway.relay import AgentRelay, AgentRoute
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.profile_cache import ProfileCache
from agent_gateway.types import Receive, Scope, Send
from agent_gateway.upstream import map_client_error

LLM_PREFIX, LETTA_PREFIX, AMS_PREFIX, ME_PATH = "/api/v1/llm", "/api/v1/letta", "/api/v1/ams", "/api/v1/me"
CACHE_SECONDS = {"models": 60.0, "me": 10.0}


def is_frontend_path(path: str) -> bool:
    return path == ME_PATH or path.startswith((LLM_PREFIX + "/", LETTA_PREFIX + "/", AMS_PREFIX + "/"))


class FrontendRoutes:
    def __init__(
        self,
        *,
        relay: AgentRelay,
        llm_routes: dict[str, AgentRoute],
        gate: Sequence[Policy],
        letta: tuple[ServiceProxy, LettaGuard] | None,
        ams: ServiceProxy | None,
        ledger: Ledger,
        profiles: ProfileCache,
        cache: ResponseCache,
        max_body_bytes: int,
        max_upload_bytes: int,
    ) -> None:
        self.relay = relay
        self.llm_routes = llm_routes
        self.gate = gate  # the user's token, then RATE_LIMIT_GENERAL
        self.letta = letta
        self.ams = ams
        self.ledger = ledger
        self.profiles = profiles
        self.cache = cache
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> tuple[str, RequestContext]:
        """Answer one request; returns the route template and the context for the access log."""
        path: str = scope["path"]
        ctx = RequestContext(request_id, "frontend", "", scope["headers"], receive)
        try:
            if path.startswith(LLM_PREFIX + "/"):
                return await self._llm(path[len(LLM_PREFIX) :], scope, ctx, send)
            if path == ME_PATH:
                await self._me(scope, ctx, send)
                return ME_PATH, ctx
            prefix, service = (LETTA_PREFIX, "letta") if path.startswith(LETTA_PREFIX + "/") else (AMS_PREFIX, "ams")
            await self._passthrough(service, prefix, scope, ctx, send)
            return f"{prefix}/{{path}}", ctx
        except GatewayError as error:
            await send_error(send, error, request_id, ctx.response_headers)
            return path if path == ME_PATH else "frontend", ctx

    async def _llm(self, suffix: str, scope: Scope, ctx: RequestContext, send: Send) -> tuple[str, RequestContext]:
        route = self.llm_routes.get(suffix.rstrip("/"))
        if route is None:
            raise NotFound()
        template = LLM_PREFIX + suffix.rstrip("/")
        if scope["method"] != route.method:
            raise MethodNotAllowed()
        ctx.route = route.name
        if route.name == "models":
            await self._cached(ctx, send, "models", lambda capture: self.relay.handle(route, ctx, capture))
            return template, ctx
        await self.relay.handle(route, ctx, send)
        return template, ctx

    async def _cached(
        self, ctx: RequestContext, send: Send, key: str, produce: Callable[[Send], Awaitable[Any]]
    ) -> None:
        """Serve from the per-user cache, or produce the answer and keep it if it is a 200."""
        await run_policies(self.gate[:1], ctx)  # the cache is per user: know the user first
        cached = await self.cache.get(ctx.user_id, key)
        if cached is not None:
            headers = [(b"content-type", cached[0]), (b"content-length", str(len(cached[1])).encode())]
            await send_bytes(send, 200, headers + [(b"x-cache", b"hit")], cached[1])
            return
        captured: dict[str, Any] = {"status": 0, "body": b"", "type": b"application/json"}

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["type"] = dict(message.get("headers", [])).get(b"content-type", b"application/json")
            else:
                captured["body"] += message.get("body", b"")
            await send(message)

        await produce(capture)
        if captured["status"] == 200:
            await self.cache.put(ctx.user_id, key, (captured["type"], captured["body"]), CACHE_SECONDS[key])

    async def _me(self, scope: Scope, ctx: RequestContext, send: Send) -> None:
        if scope["method"] != "GET":
            raise MethodNotAllowed()
        await run_policies(self.gate, ctx)
        cached = await self.cache.get(ctx.user_id, "me")
        if cached is not None:
            await send_bytes(send, 200, [(b"content-type", cached[0]), (b"x-cache", b"hit")], cached[1])
            return
        if self.ams is not None:
            call = UpstreamCall("GET", ["me"], "", self._as_user(ctx, forwarded_headers(ctx.headers)))
            response = await self.ams.open(call)
            body = await _read(response, self.ams.name)
            content_type = response.headers.get("content-type", "application/json").encode()
            if response.status == 200:
                await self.cache.put(ctx.user_id, "me", (content_type, body), CACHE_SECONDS["me"])
            await send_bytes(send, response.status, [(b"content-type", content_type)], body)
            return
        profile = await self.profiles.get(ctx.user_id)
        month = datetime.now(UTC).strftime("%Y-%m")
        totals = await self.ledger.month_totals(month, ctx.user_id)
        view = {
            "id": ctx.user_id,
            "allowed_models": sorted(profile.allowed_models)
            if profile and profile.allowed_models is not None
            else None,
            "monthly_limit": profile.monthly_limit if profile else None,
            "usage": {"month": month, "total_tokens": totals[0]["total_tokens"] if totals else 0},
        }
        await send_json(send, 200, view)

    def _as_user(self, ctx: RequestContext, headers: dict[str, str]) -> dict[str, str]:
        headers["Authorization"] = f"Bearer {ctx.token}"
        headers["X-User-ID"] = ctx.user_id
        headers["X-Request-ID"] = ctx.request_id
        return headers

    async def _passthrough(self, service: str, prefix: str, scope: Scope, ctx: RequestContext, send: Send) -> None:
        proxy = self.letta[0] if service == "letta" and self.letta else self.ams if service == "ams" else None
        if proxy is None:
            raise NotFound(f"The {service} route is not configured.")
        await run_policies(self.gate, ctx)
        segments = split_path(scope.get("raw_path") or scope["path"].encode(), prefix)
        headers = forwarded_headers(ctx.headers)
        headers["X-Request-ID"] = ctx.request_id
        call = UpstreamCall(scope["method"], segments, scope.get("query_string", b"").decode("latin-1"), headers)
        declared = ctx.header(b"content-length")
        content_types = [value.lower() for name, value in ctx.headers if name == b"content-type"]
        if len(content_types) > 1:  # what we inspect must be what the upstream reads
            raise BadRequest("Send one Content-Type header.")
        content_type = content_types[0] if content_types else b""
        # Only uploads stream through uninspected; every other Letta body is JSON the guard reads.
        is_upload = service == "ams" or (bool(segments) and segments[-1] == "upload")
        if content_type.startswith(b"multipart/") and is_upload:
            if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
                raise BodyTooLarge()
            call.stream_body = CappedUpload(ctx.receive, self.max_upload_bytes)
        elif call.method in ("POST", "PUT", "PATCH"):
            call.body = await read_body(ctx.receive, self.max_body_bytes, declared)
        verdict = Verdict()
        if service == "letta":
            assert self.letta is not None
            verdict = await self.letta[1].check(ctx.user_id, call, ctx.token)
        else:
            self._as_user(ctx, call.headers)
        response = await proxy.open(call)
        if verdict.edit is not None and response.status < 300 and response.content_type == "application/json":
            content = await _read(response, proxy.name)
            try:
                answer = orjson.loads(content)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"{proxy.name} sent a malformed answer.") from None
            await send_json(send, response.status, verdict.edit(answer), ctx.response_headers)
            return
        await proxy.relay(response, send, ctx.response_headers, ctx.request_id, ctx.receive)


async def _read(response: aiohttp.ClientResponse, name: str) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise map_client_error(exc, name) from None
    finally:
        response.release()
