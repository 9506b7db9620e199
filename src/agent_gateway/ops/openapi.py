"""OpenAPI for the routes served outside FastAPI, generated from their route tables and the
error tree, so `/docs` cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from agent_gateway import errors
from agent_gateway.domain import USER_ID_PATTERN
from agent_gateway.frontend.services import ServiceSpec
from agent_gateway.llm import fields
from agent_gateway.llm.relay import LLMRoute

_SUMMARIES = {
    "chat": "Chat completion",
    "responses": "Responses API",
    "embeddings": "Embeddings (cost: the prompt's tokens)",
    "models": "Models, filtered to the user's allow-list",
}
_USER = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": USER_ID_PATTERN},
    "description": "The user whose LiteLLM key, limits and ledger the call uses.",
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                name: {"type": "string", "nullable": True}
                for name in ("message", "type", "code", "param", "request_id")
            },
        }
    },
}


def _errors() -> dict[str, Any]:
    """Every §8 answer, from the error tree: status -> the codes that carry it."""
    by_status: dict[int, set[str]] = {}
    pending = [errors.GatewayError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        by_status.setdefault(kind.status_code, set()).add(kind.code or kind.type)
    return {
        str(status): {
            "description": ", ".join(sorted(codes)),
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status, codes in sorted(by_status.items())
    }


def _operation(route: LLMRoute, security: str, user: bool) -> dict[str, Any]:
    steps = ", ".join(policy.summary for policy in route.chain.policies)
    operation: dict[str, Any] = {
        "tags": ["agents" if user else "frontend"],
        "summary": _SUMMARIES[route.name],
        "description": f"LiteLLM `{route.upstream_path}` with the user's own key. Admission, in order: {steps}.",
        "parameters": [_USER] if user else [],
        "security": [{security: []}],
        "responses": {
            "200": {
                "description": "LiteLLM's answer; `text/event-stream` when `stream: true`.",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **_errors(),
        },
    }
    if route.method == "POST":
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _body(route.name)}}}
    return operation


def _body(route: str) -> dict[str, Any]:
    """The fields the gateway passes on (`llm/fields.py`); others are dropped or refused with a 400."""
    properties: dict[str, Any] = {name: {} for name in sorted(fields.ALLOWED[route])}
    properties["model"] = {"type": "string", "minLength": 1}
    required = ["model"]
    if route == "chat":
        properties["messages"] = {"type": "array", "minItems": 1, "items": {"type": "object"}}
        required.append("messages")
    properties["stream"] = {"type": "boolean"}
    return {"type": "object", "required": required, "properties": properties}


def llm_paths(prefix: str, routes: dict[str, LLMRoute], *, security: str, user: bool) -> dict[str, Any]:
    return {
        prefix + suffix: {route.method.lower(): _operation(route, security, user)} for suffix, route in routes.items()
    }


def service_paths(services: Iterable[ServiceSpec]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    parameter = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    for spec in services:
        operation = {
            "tags": [spec.name],
            "summary": f"{spec.name} pass-through",
            "description": f"`{spec.upstream_prefix}/{{path}}` on the {spec.name} service, as the signed-in user.",
            "parameters": [parameter],
            "security": [{"supabaseToken": []}],
            "responses": {"200": {"description": f"The {spec.name} service's answer."}, **_errors()},
        }
        paths[f"{spec.public_prefix}/{{path}}"] = {m: operation for m in ("get", "post", "put", "patch", "delete")}
    paths["/api/v1/me"] = {
        "get": {
            "tags": ["frontend"],
            "summary": "The signed-in user",
            "description": "AMS `/me`, or the gateway's own view: allowed models, monthly limit, usage.",
            "security": [{"supabaseToken": []}],
            "responses": {"200": {"description": "The user."}, **_errors()},
        }
    }
    return paths


def describe_routes(app: FastAPI, paths: dict[str, Any]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():  # FastAPI's own 422 is never sent: §8 errors are
                    operation["responses"].pop("422", None)
                    operation["responses"] = {**_errors(), **operation["responses"]}
            schema["paths"] = {**paths, **schema["paths"]}
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                {
                    "agentSecret": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "AGENT_SECRET_KEY or agt1. token",
                    },
                    "supabaseToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                }
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
