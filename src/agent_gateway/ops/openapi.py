"""OpenAPI for the routes served outside FastAPI, generated from their route tables and the
error tree, so `/docs` cannot drift from what is served."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from agent_gateway import errors
from agent_gateway.domain import USER_ID_PATTERN
from agent_gateway.frontend.letta.local import models as letta_models
from agent_gateway.frontend.letta.rules import RULES, Answer
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


# What each door's 401 says (its credential), for the examples.
_REFUSED_CREDENTIAL = {
    "agentSecret": errors.InvalidSecret.message,
    "supabaseToken": "Missing bearer token.",
    "adminKey": "Missing or invalid admin key.",
}


def _errors(door: str) -> dict[str, Any]:
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
                    "examples": {kind.code or kind.type: {"value": _error_example(kind, door)} for kind in kinds},
                }
            },
        }
        for status, kinds in sorted(by_status.items())
    }


def _error_example(kind: type[errors.GatewayError], door: str) -> dict[str, Any]:
    request_id = "0f6c1c1e3b9a4d2c8e7f5a6b4c3d2e1f"
    return {
        "error": {
            "message": _REFUSED_CREDENTIAL[door] if kind is errors.InvalidSecret else kind.message,
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
_ANSWER_NOTES = {
    "chat": "LiteLLM's answer; with `stream: true`, its chunks as they come (`text/event-stream`), the one"
    " carrying `usage` only when `stream_options.include_usage` asks for it.",
    "responses": "LiteLLM's answer; with `stream: true`, its events as they come (`text/event-stream`).",
    "models": "LiteLLM's models, only those in the user's allowed models.",
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
                "description": _ANSWER_NOTES.get(route.name, "LiteLLM's answer."),
                "content": {
                    "application/json": {"schema": {"type": "object"}, "example": _ANSWERS[route.name]},
                    **({"text/event-stream": {"example": _STREAMS[route.name]}} if route.name in _STREAMS else {}),
                },
            },
            **_errors(security),
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
    for spec in services:
        samples = _SAMPLES[spec.name]
        paths[f"{spec.public_prefix}/{{path}}"] = {
            method.lower(): _pass_through(spec, method, samples[method]) for method in _methods(spec)
        }
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
                                "id": _SUB,
                                "allowed_models": ["gpt-4o-mini"],
                                "monthly_limit": 1000000,
                                "usage": {"month": "2026-12", "total_tokens": 18250},
                            }
                        }
                    },
                },
                **_errors("supabaseToken"),
            },
        }
    }
    return paths


def _methods(spec: ServiceSpec) -> list[str]:
    """Letta's methods are its allow-list's; AMS takes any, as the user's own token authorises."""
    if spec.name == "letta":
        return sorted({method for rule in RULES for method in rule.methods})
    return ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _letta_routes(method: str) -> str:
    """The Letta routes open to `method`, from the allow-list itself (`frontend/letta/rules.py`)."""
    return "\n".join(f"- `{'/'.join(rule.path)}`" for rule in RULES if method in rule.methods)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One call through a pass-through route, as the docs show it."""

    summary: str
    path: str
    answer: Any = None  # JSON; None for a streamed route
    body: dict[str, Any] | None = None
    stream: str | None = None  # the answer as `text/event-stream`


def _pass_through(spec: ServiceSpec, method: str, samples: dict[str, _Sample]) -> dict[str, Any]:
    description = f"`{spec.upstream_prefix}/{{path}}` on the {spec.name} service, as the signed-in user."
    if spec.name == "letta":
        description += (
            " Only the user's own objects, on these routes (everything else is 403; collections are sent to"
            " Letta with their trailing slash, either spelling works here):\n\n" + _letta_routes(method)
        )
    else:
        description += " The user's token and `X-User-ID` go with the call; AMS's answer comes back as it is."
    content = {
        media: {"examples": examples}
        for media, examples in (
            ("application/json", _examples(samples, "answer")),
            ("text/event-stream", _examples(samples, "stream")),
        )
        if examples
    }
    operation: dict[str, Any] = {
        "tags": [spec.name],
        "summary": f"{spec.name} pass-through",
        "description": description,
        "parameters": [
            {
                "name": "path",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "examples": _examples(samples, "path"),
            }
        ],
        "security": [{"supabaseToken": []}],
        "responses": {
            "200": {"description": f"The {spec.name} service's answer.", "content": content},
            **_errors("supabaseToken"),
        },
    }
    if bodies := _examples(samples, "body"):
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}, "examples": bodies}},
        }
    return operation


def _examples(samples: dict[str, _Sample], part: str) -> dict[str, Any]:
    """OpenAPI's named examples of one part (path, body, answer, stream) of the samples that have it."""
    return {
        name: {"summary": sample.summary, "value": getattr(sample, part)}
        for name, sample in samples.items()
        if getattr(sample, part) is not None
    }


_SUB = "3f0c2a9e-5b1d-4c8e-9a7f-2d6b1e4c8a90"  # a signed-in user's id (the token's `sub`)
_ENDPOINT = f"https://gateway.example.com/api/v1/agents/{_SUB}/messages"  # PUBLIC_BASE_URL + the user's route
_AGENT_ID = "agent-5f2a1c3e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"
_AGENT = {
    "id": _AGENT_ID,
    "name": "support-bot",
    "tags": [f"owner:{_SUB}"],
    "llm_config": {
        "model": "gpt-4o-mini",
        "model_endpoint_type": "openai",
        "model_endpoint": _ENDPOINT,
        "context_window": 128000,
    },
}
_MESSAGE = {"messages": [{"role": "user", "content": "What did we talk about yesterday?"}]}
_LETTA_USAGE = {
    "message_type": "usage_statistics",
    "prompt_tokens": 2240,
    "completion_tokens": 48,
    "total_tokens": 2288,
}
_LETTA_STREAM = (
    'data: {"id":"message-1","message_type":"reasoning_message","reasoning":"The user asks about yesterday."}\n\n'
    'data: {"id":"message-2","message_type":"assistant_message","content":"We planned your trip to Lisbon."}\n\n'
    'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'
    f"data: {json.dumps(_LETTA_USAGE, separators=(',', ':'))}\n\n"
    "data: [DONE]\n\n"
)
_SAMPLES: dict[str, dict[str, dict[str, _Sample]]] = {  # service -> method -> name -> sample
    "letta": {
        "GET": {
            "list_agents": _Sample("The user's own agents", "agents/", [_AGENT]),
            "models": _Sample(
                "The user's allowed models, in Letta's shape, each pointing at the user's agent route",
                "models",
                letta_models(Answer.MODELS, frozenset({"gpt-4o-mini"}), [], _ENDPOINT),
            ),
        },
        "POST": {
            "create_agent": _Sample(
                "Create an agent (its model endpoint is forced to the user's agent route)",
                "agents/",
                _AGENT,
                {
                    "name": "support-bot",
                    "model": "openai/gpt-4o-mini",
                    "memory_blocks": [{"label": "human", "value": "Alice"}],
                },
            ),
            "send_message": _Sample(
                "One turn of the agent",
                f"agents/{_AGENT_ID}/messages",
                {
                    "messages": [
                        {
                            "id": "message-2",
                            "message_type": "assistant_message",
                            "content": "We planned your trip to Lisbon.",
                        }
                    ],
                    "stop_reason": {"message_type": "stop_reason", "stop_reason": "end_turn"},
                    "usage": _LETTA_USAGE,
                },
                _MESSAGE,
            ),
            "stream_message": _Sample(
                "One turn, streamed",
                f"agents/{_AGENT_ID}/messages/stream",
                body={**_MESSAGE, "stream_tokens": True},
                stream=_LETTA_STREAM,
            ),
        },
        "PATCH": {
            "rename_agent": _Sample(
                "Change an agent", f"agents/{_AGENT_ID}", {**_AGENT, "name": "travel-bot"}, {"name": "travel-bot"}
            ),
        },
        "DELETE": {
            "delete_agent": _Sample(
                "Delete an agent", f"agents/{_AGENT_ID}", {"message": f"Agent id={_AGENT_ID} successfully deleted"}
            ),
        },
    },
    "ams": {
        "GET": {
            "list_agents": _Sample(
                "e.g. the user's agents", "agents", {"agents": [{"id": _AGENT_ID, "name": "support-bot"}]}
            )
        },
        "POST": {
            "create_agent": _Sample(
                "e.g. create an agent", "agents", {"id": _AGENT_ID, "name": "support-bot"}, {"name": "support-bot"}
            )
        },
        "PUT": {
            "replace_agent": _Sample(
                "e.g. replace an agent",
                f"agents/{_AGENT_ID}",
                {"id": _AGENT_ID, "name": "travel-bot"},
                {"name": "travel-bot"},
            )
        },
        "PATCH": {
            "change_agent": _Sample(
                "e.g. change an agent",
                f"agents/{_AGENT_ID}",
                {"id": _AGENT_ID, "name": "travel-bot"},
                {"name": "travel-bot"},
            )
        },
        "DELETE": {
            "delete_agent": _Sample("e.g. delete an agent", f"agents/{_AGENT_ID}", {"id": _AGENT_ID, "deleted": True})
        },
    },
}


def describe_routes(app: FastAPI, paths: dict[str, Any]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():  # FastAPI's own 422 is never sent: §8 errors are
                    operation["responses"].pop("422", None)
                    door = "adminKey" if "admin" in operation.get("tags", ()) else "agentSecret"
                    operation["responses"] = {**_errors(door), **operation["responses"]}
            schema["paths"] = {**paths, **schema["paths"]}
            for unused in ("HTTPValidationError", "ValidationError"):  # the 422's shapes, gone with it
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                {
                    "agentSecret": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "AGENT_SECRET_KEY, or the user's own agt1./agt2. token",
                    },
                    "supabaseToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                }
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
