"""The cooler routes on FastAPI: /ping, /health, /metrics, the admin API and the docs.

The LLM and frontend routes are served by the lean dispatcher, not by FastAPI; `openapi.py`
describes them from their route tables so `/docs` covers every route. FastAPI's own refusals
(unknown route, bad query) are translated to the gateway's errors at this boundary, and every
error is rendered by `errors.render_error`, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.exceptions import HTTPException

from agent_gateway import __version__
from agent_gateway.errors import (
    BadRequest,
    DatabaseUnavailable,
    GatewayError,
    InvalidField,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    render_error,
)
from agent_gateway.ops import metrics
from agent_gateway.ops.admin import build_admin_router
from agent_gateway.ops.admin_page import AdminSessions, build_admin_page, mount_assets
from agent_gateway.ops.health import HealthChecks
from agent_gateway.ops.openapi import describe_routes
from agent_gateway.ops.schemas import Status
from agent_gateway.ops.users import Users
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.postgrest import ProfileSourceError
from agent_gateway.upstream.litellm_admin import PriceList


def build_ops_app(
    health: HealthChecks,
    ledger: Ledger,
    admin_key: SecretStr | None,
    routes: dict[str, Any],
    users: Users,
    prices: PriceList | None,
    status: Callable[[], Status],
    sessions: AdminSessions | None,
) -> FastAPI:
    """The ops routes; `routes` are the OpenAPI paths of the routes served outside FastAPI."""
    app = FastAPIOffline(  # /docs and /redoc load their scripts from here: they work offline
        title="Agent Gateway",
        static_url="/docs/assets",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        version=__version__,
        description="OpenAI-compatible gateway for AI-agent platforms: per-user LiteLLM keys, limits and metering.",
        default_response_class=JSONResponse,
    )

    @app.middleware("http")
    async def docs_stay_here(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.url.path in _DOCS_PAGES:  # ReDoc's own logo would come from its CDN: not fetched
            response.headers["Content-Security-Policy"] = _DOCS_POLICY
        return response

    def gateway_error(request: Request, error: GatewayError) -> Response:
        status, headers, body = render_error(error, request.scope.get("state", {}).get("request_id", ""))
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> Response:
        return gateway_error(request, exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        mapped: GatewayError = {404: NotFound(), 405: MethodNotAllowed()}.get(exc.status_code) or BadRequest()
        return gateway_error(request, mapped)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return gateway_error(request, _refusal(exc.errors()))

    @app.exception_handler(ProfileSourceError)
    async def on_profiles_down(request: Request, exc: ProfileSourceError) -> Response:
        return gateway_error(request, ServiceUnavailable("Supabase's user_profiles cannot be reached right now."))

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    @app.exception_handler(OSError)
    async def on_database_down(request: Request, exc: Exception) -> Response:
        return gateway_error(request, DatabaseUnavailable("The database cannot be reached right now."))

    @app.get("/ping", tags=["operations"], summary="Liveness, no I/O", responses=_example({"status": "ok"}))
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/health",
        tags=["operations"],
        summary="Every configured dependency, checked concurrently (503 when one fails or while draining)",
        responses={
            200: {"content": {"application/json": {"example": _HEALTH}}},
            503: {
                "description": "A configured dependency failed, or the instance is draining: the same report",
                "content": {"application/json": {"example": _HEALTH_FAILING}},
            },
        },
    )
    async def health_report() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"example": _METRICS}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_admin_router(admin_key, ledger, users, prices, status, sessions))
    if sessions is not None:
        app.include_router(build_admin_page(sessions))
        mount_assets(app)
    describe_routes(app, routes)
    return app


_DOCS_PAGES = frozenset({"/docs", "/redoc"})
# The docs pages load only what the gateway serves (their initialising script is inline).
_DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)
_CHECKS: dict[str, Any] = {
    "database": {"status": "ok", "latency_ms": 0.8},
    "redis": {"status": "not_configured"},
    "litellm": {"status": "ok", "latency_ms": 3.1},
    "letta": {"status": "ok", "latency_ms": 4.7, "breaker": "closed"},
    "ams": {"status": "not_configured"},
    "supabase": {"status": "ok", "latency_ms": 21.4},
}
_HEALTH = {"status": "ok", "checks": _CHECKS}
_HEALTH_FAILING = {
    "status": "error",
    "checks": {
        **_CHECKS,
        "letta": {
            "status": "error",
            "reason": "The upstream service could not be reached or broke the protocol.",
            "latency_ms": 1.0,
            "breaker": "closed",
        },
    },
}
_METRICS = (
    "# HELP gateway_requests_total Requests answered, by route template and status.\n"
    "# TYPE gateway_requests_total counter\n"
    'gateway_requests_total{route="/api/v1/agents/{user_id}/messages/chat/completions",status="200"} 1042.0\n'
)


def _example(answer: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": answer}}}}


def _refusal(errors: Sequence[Any]) -> GatewayError:
    """FastAPI's validation errors as one §8 error about the first field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidJSON()
    location = [str(part) for part in first.get("loc", ())]
    param = location[-1] if len(location) > 1 else None
    if first.get("type") == "extra_forbidden":
        return InvalidField(param or "request", "is not a field of this request")
    if first.get("type") == "missing":
        return InvalidField(param or "request", "is required")
    if location[:1] == ["body"] and len(location) > 2:  # a list's item: name the field
        param = location[1]
    return BadRequest(f"Invalid {param or 'request'}.", param=param)
