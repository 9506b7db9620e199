"""The cooler routes on FastAPI: /ping, /health, /metrics, the admin API and the docs.

The LLM and frontend routes are served by the lean dispatcher, not by FastAPI; `openapi.py`
describes them from their route tables so `/docs` covers every route. FastAPI's own refusals
(unknown route, bad query) are translated to the gateway's errors at this boundary, and every
error is rendered by `errors.render_error`, as everywhere else.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.exceptions import HTTPException

from agent_gateway import __version__
from agent_gateway.domain import USER_ID_PATTERN, this_month
from agent_gateway.errors import BadRequest, GatewayError, InvalidSecret, MethodNotAllowed, NotFound, render_error
from agent_gateway.ops import metrics
from agent_gateway.ops.health import HealthChecks
from agent_gateway.ops.openapi import describe_routes
from agent_gateway.stores.ledger import Ledger

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def build_ops_app(health: HealthChecks, ledger: Ledger, admin_key: SecretStr | None, routes: dict[str, Any]) -> FastAPI:
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
        first = exc.errors()[0] if exc.errors() else {}
        param = str(first.get("loc", ["", ""])[-1]) if first else None
        return gateway_error(request, BadRequest(f"Invalid {param or 'request'}.", param=param))

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

    @app.get("/api/v1/admin/usage", tags=["admin"], summary="Token usage per user and month (bearer ADMIN_API_KEY)")
    async def admin_usage(
        authorization: Annotated[str | None, Header()] = None,
        user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
        month: Annotated[str | None, Query(description="YYYY-MM, UTC; default this month")] = None,
    ) -> Any:
        _require_admin(admin_key, authorization)
        month = month or this_month()
        if not _MONTH.match(month):
            raise BadRequest("`month` must be YYYY-MM.", param="month")
        totals = await ledger.month_totals(month, user_id)
        if user_id is None:
            return totals
        return totals[0] if totals else _empty_usage(user_id, month)

    describe_routes(app, routes)
    return app


def _require_admin(key: SecretStr | None, authorization: str | None) -> None:
    if key is None:
        raise NotFound("The admin API is off (ADMIN_API_KEY is not set).")
    expected = f"Bearer {key.get_secret_value()}".encode()
    if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
        raise InvalidSecret("Missing or invalid admin key.")


def _empty_usage(user_id: str, month: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "month": month,
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "estimated_requests": 0,
    }
