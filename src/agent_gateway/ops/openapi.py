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
    """Every §8 answer, from the error tree: status -> the codes that carry it, each an example."""
    by_status: dict[int, list[type[errors.GatewayError]]] = {}
    pending = [errors.GatewayError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        by_status.setdefault(kind.status_code, []).append(kind)
    return {
        str(status): {
            "description": ", ".join(sorted({kind.code or kind.type for kind in kinds})),
            "content": {
                "application/json": {
                    "schema": _ERROR,
                    "examples": {kind.code or kind.type: {"value": _error_example(kind)} for kind in kinds},
                }
            },
        }
        for status, kinds in sorted(by_status.items())
    }


def _error_example(kind: type[errors.GatewayError]) -> dict[str, Any]:
    request_id = "0f6c1c1e3b9a4d2c8e7f5a6b4c3d2e1f"
    return {
        "error": {
            "message": kind.message,
            "type": kind.type,
            "code": kind.code,
            "param": None,
            "request_id": request_id,
        }
    }


# What each LLM route is sent and answers, as LiteLLM (and so OpenAI's SDK) shapes them.
_USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}}
_REQUESTS: dict[str, Any] = {
    "chat": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]},
    "responses": {"model": "gpt-4o-mini", "input": "Say hello in five words.", "max_output_tokens": 64},
    "embeddings": {"model": "text-embedding-3-small", "input": ["The quick brown fox"]},
}
_ANSWERS: dict[str, Any] = {
    "chat": {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1764806400,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, nice to meet!"},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    },
    "responses": {
        "id": "resp_abc123",
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello there, nice to meet!"}],
            }
        ],
        "usage": {"input_tokens": 9, "output_tokens": 6, "total_tokens": 15},
    },
    "embeddings": {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0091, 0.0152]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    },
    "models": {
        "object": "list",
        "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1764806400, "owned_by": "openai"}],
    },
}
_CHAT_STREAM = (
    'data: {"id":"chatcmpl-abc123","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"}}]}\n\n'
    'data: {"id":"chatcmpl-abc123","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    'data: {"id":"chatcmpl-abc123","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    '"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    "data: [DONE]\n\n"
)
_RESPONSES_STREAM = (
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hello"}\n\n'
    'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_abc123",'
    '"status":"completed","usage":{"input_tokens":9,"output_tokens":6,"total_tokens":15}}}\n\n'
)
_STREAMS = {"chat": _CHAT_STREAM, "responses": _RESPONSES_STREAM}


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
                "content": {
                    "application/json": {"schema": {"type": "object"}, "example": _ANSWERS[route.name]},
                    **({"text/event-stream": {"example": _STREAMS[route.name]}} if route.name in _STREAMS else {}),
                },
            },
            **_errors(),
        },
    }
    if route.method == "POST":
        examples = {"plain": {"value": _REQUESTS[route.name]}}
        if route.name == "chat":
            streamed = {**_REQUESTS["chat"], "stream": True, "stream_options": {"include_usage": True}}
            examples["streamed"] = {"value": streamed}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body(route.name), "examples": examples}},
        }
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
        example = _SERVICE_EXAMPLES.get(spec.name, {})
        operation = {
            "tags": [spec.name],
            "summary": f"{spec.name} pass-through",
            "description": f"`{spec.upstream_prefix}/{{path}}` on the {spec.name} service, as the signed-in user."
            + example.get("note", ""),
            "parameters": [{**parameter, "example": example.get("path", "health")}],
            "security": [{"supabaseToken": []}],
            "responses": {
                "200": {
                    "description": f"The {spec.name} service's answer.",
                    "content": {"application/json": {"example": example.get("answer", {"status": "ok"})}},
                },
                **_errors(),
            },
        }
        paths[f"{spec.public_prefix}/{{path}}"] = {m: operation for m in ("get", "post", "put", "patch", "delete")}
    paths["/api/v1/me"] = {
        "get": {
            "tags": ["frontend"],
            "summary": "The signed-in user",
            "description": "AMS `/me`, or the gateway's own view: allowed models, monthly limit, usage.",
            "security": [{"supabaseToken": []}],
            "responses": {
                "200": {
                    "description": "The user.",
                    "content": {
                        "application/json": {
                            "example": {
                                "id": "3f0c2a9e-5b1d-4c8e-9a7f-2d6b1e4c8a90",
                                "allowed_models": ["gpt-4o-mini"],
                                "monthly_limit": 1000000,
                                "usage": {"month": "2026-12", "total_tokens": 18250},
                            }
                        }
                    },
                },
                **_errors(),
            },
        }
    }
    return paths


_SERVICE_EXAMPLES: dict[str, dict[str, Any]] = {
    "letta": {
        "path": "agents/",
        "note": " E.g. `GET agents/` lists the user's own agents (Letta's collection routes end with `/`).",
        "answer": [
            {
                "id": "agent-5f2a1c3e-8b7d-4e6f-9a0b-1c2d3e4f5a6b",
                "name": "support-bot",
                "tags": ["user:3f0c2a9e-5b1d-4c8e-9a7f-2d6b1e4c8a90"],
                "llm_config": {"model": "gpt-4o-mini", "model_endpoint_type": "openai"},
            }
        ],
    },
    "ams": {"path": "agents", "answer": {"agents": [{"id": "a1", "name": "support-bot"}]}},
}


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
