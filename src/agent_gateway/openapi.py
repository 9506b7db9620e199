"""OpenAPI descriptions of the routes served outside FastAPI: the agent and frontend routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_BASE = "/api/v1/agents/{user_id}/messages"
_USER = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
    "description": "The user whose LiteLLM key, limits and ledger the call uses.",
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                k: {"type": "string", "nullable": True} for k in ("message", "type", "code", "param", "request_id")
            },
        }
    },
}
_ERRORS = {
    "400": "Malformed path or body",
    "401": "Missing or invalid agent secret (or derived token)",
    "403": "Unknown user, model not allowed, or the user's key refused upstream",
    "413": "Body over MAX_BODY_BYTES",
    "429": "Request rate, token rate or monthly limit (with Retry-After and RateLimit headers)",
    "502": "LiteLLM unreachable",
    "504": "LiteLLM did not answer in time",
}


def _operation(
    summary: str, description: str, body: bool, *, tag: str = "agents", security: str = "agentSecret", user: bool = True
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "LiteLLM's answer; `text/event-stream` when `stream: true`.",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
        }
    }
    for status, text in _ERRORS.items():
        responses[status] = {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    operation: dict[str, Any] = {
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": [_USER] if user else [],
        "security": [{security: []}],
        "responses": responses,
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "required": ["model"]}}},
        }
    return operation


def _frontend_paths() -> dict[str, Any]:
    def op(summary: str, description: str, body: bool = False, tag: str = "frontend") -> dict[str, Any]:
        return _operation(summary, description, body, tag=tag, security="supabaseToken", user=False)

    llm = "The agent pipeline for the signed-in user (`sub`): body, profile, allowed models, limits."
    path = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    letta = op(
        "Letta pass-through", "Letta `/v1/{path}`, allow-listed, only the user's own agents/sources.", tag="letta"
    )
    ams = op("AMS pass-through", "AMS `/{path}` with the user's token and `X-User-ID`.", tag="ams")
    for operation in (letta, ams):
        operation["parameters"] = [path]
    return {
        "/api/v1/llm/chat/completions": {"post": op("Chat completion", llm, True)},
        "/api/v1/llm/responses": {"post": op("Responses API", llm, True)},
        "/api/v1/llm/embeddings": {"post": op("Embeddings", llm, True)},
        "/api/v1/llm/models": {"get": op("Models", "The user's allowed models (cached briefly).")},
        "/api/v1/me": {"get": op("The user", "AMS `/me`, or the gateway's view: allowed models, limit, usage.")},
        "/api/v1/letta/{path}": {method: letta for method in ("get", "post", "patch", "delete")},
        "/api/v1/ams/{path}": {method: ams for method in ("get", "post", "put", "patch", "delete")},
    }


def add_agent_routes(app: FastAPI) -> None:
    chat = (
        "OpenAI chat completion with the user's LiteLLM key. Letta agents use the base path "
        "as their OpenAI base URL. Admission: agent secret, body, profile, allowed models, rate limit."
    )
    paths = {
        _BASE: {"post": _operation("Chat completion (base form)", chat, True)},
        f"{_BASE}/chat/completions": {"post": _operation("Chat completion", chat, True)},
        f"{_BASE}/responses": {"post": _operation("Responses API", "OpenAI Responses API call.", True)},
        f"{_BASE}/embeddings": {"post": _operation("Embeddings", "Embeddings; cost = prompt tokens.", True)},
        f"{_BASE}/models": {"get": _operation("Models", "LiteLLM's models filtered to the user's allow-list.", False)},
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema["paths"] = {**paths, **_frontend_paths(), **schema["paths"]}
            schema.setdefault("components", {})["securitySchemes"] = {
                "agentSecret": {"type": "http", "scheme": "bearer", "description": "AGENT_SECRET_KEY or agt1. token"},
                "supabaseToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
