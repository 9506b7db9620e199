"""The cooler routes on FastAPI: /ping, /health, /metrics, the admin API and the docs.

The LLM and frontend routes are served by the lean dispatcher, not by FastAPI; `openapi.py`
describes them from their route tables so `/docs` covers every route. FastAPI's own refusals
(unknown route, bad query) are translated to the gateway's errors at this boundary, and every
error is rendered by `errors.render_error`, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
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
    app = FastAPI(
        title="Agent Gateway",
        version=__version__,
        description="OpenAI-compatible gateway for AI-agent platforms: per-user LiteLLM keys, limits and metering.",
        default_response_class=JSONResponse,
    )

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

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    @app.exception_handler(OSError)
    async def on_database_down(request: Request, exc: Exception) -> Response:
        return gateway_error(request, DatabaseUnavailable("The database cannot be reached right now."))

    @app.get("/ping", tags=["operations"], summary="Liveness, no I/O")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health", tags=["operations"], summary="Every configured dependency, checked concurrently")
    async def health_report() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_admin_router(admin_key, ledger, users, prices, status, sessions))
    if sessions is not None:
        app.include_router(build_admin_page(sessions))
        mount_assets(app)
    describe_routes(app, routes)
    return app


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
