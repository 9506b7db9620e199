"""A fake LiteLLM proxy over real HTTP: OpenAI JSON and SSE, steered by the model name.

Models:
- anything else: a normal answer; usage prompt=11 completion=7 total=18 (streams: 5 chunks)
- `stall`: a stream that sends one chunk, then waits until the test calls `release()`
- `slow-stream`: chunks 50 ms apart (20 of them)
- `drop`: a stream that breaks the connection after two chunks
- `no-usage`: JSON answers without `usage`; streams without a usage chunk
- `null-details`: usage whose token details hold nulls (as some providers send)
- `error-500`, `error-429`, `error-400`: LiteLLM's error bodies with those statuses
- `key-401`: LiteLLM's 401 for a bad key, echoing key fragments as it really does
- `hang`: never answers (for timeouts)
- `garbage`: a 200 that breaks the protocol: a JSON answer that is not JSON; a stream that sends
  one chunk, then half an event, and ends cleanly
- `tokens-N`: a normal answer whose usage totals N tokens (40 % prompt), streamed or not
- `letta-loop`: an agent's tool loop, as a Letta agent needs it: a call to `conversation_search`
  first, then the answer (through `send_message` when the agent has that tool); usage whose
  token details hold nulls, as Gemini sends them. `letta-slow-S` answers the same after S seconds.

Key management, as LiteLLM 1.x documents and serves it (litellm/proxy/management_endpoints/
key_management_endpoints.py), with `master_key` as the only admin: `POST /key/generate`
(`user_id`, `models`, `metadata`; answers `key`, `key_name`, `token`…), `POST /key/update`
(404 "Key not found." for a key it does not know), `POST /key/delete` (`keys`; 404 "No keys
found"), errors in LiteLLM's `{"error": {"message", "type", "param", "code"}}` shape. A deleted
key is refused (401) on the LLM routes, as LiteLLM with its database refuses it. `GET
/model/info` lists the models with prices from LiteLLM's cost map (`PRICES`). `fail(route,
status)` makes the next call of a route fail as LiteLLM would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.server import ThreadedServer

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
LETTA_ANSWER = "Looked it up: hello."
STREAM_WORDS = ["Hel", "lo ", "fro", "m f", "ake"]
MASTER_KEY = "sk-litellm-master-key-for-tests"
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-sonnet"]
# USD per token, as LiteLLM's model cost map has them; claude-3-5-sonnet has none here (a custom deployment).
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
    },
    "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0},
}
_KEY_ROUTES = ("/key/generate", "/key/update", "/key/delete")


def litellm_error(status: int, message: str, type_: str, param: str | None = None) -> web.Response:
    """LiteLLM's ProxyException answer: the status again, as a string, in `code`."""
    error = {"message": message, "type": type_, "param": param, "code": str(status)}
    return web.json_response({"error": error}, status=status)


@dataclass
class VirtualKey:
    key: str
    user_id: str | None
    models: list[str]
    metadata: dict[str, Any]


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _tool_call(tool: dict[str, Any], **wanted: Any) -> dict[str, str]:
    """A call of `tool` with those of `wanted`'s arguments its schema has, its thoughts first (Letta
    shows a streamed call only once it has read them)."""
    properties = tool.get("parameters", {}).get("properties", {})
    arguments = {name: "Let me see." for name in ("thinking", "inner_thoughts") if name in properties}
    arguments |= {name: value for name, value in wanted.items() if name in properties}
    return {"name": tool["name"], "arguments": json.dumps(arguments)}


def sized_usage(model: str) -> dict[str, int]:
    total = int(model.removeprefix("tokens-"))
    prompt = total * 4 // 10
    return {"prompt_tokens": prompt, "completion_tokens": total - prompt, "total_tokens": total}


@dataclass
class Seen:
    path: str
    method: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # every header as sent, repeats kept


@dataclass
class FakeLiteLLM(ThreadedServer):
    requests: list[Seen] = field(default_factory=list)
    finished_streams: int = 0
    master_key: str = MASTER_KEY
    keys: dict[str, VirtualKey] = field(default_factory=dict)  # the live ones
    generated: list[VirtualKey] = field(default_factory=list)  # every key ever made
    deleted: set[str] = field(default_factory=set)
    failures: dict[str, list[int]] = field(default_factory=dict)
    _release: asyncio.Event | None = None

    def build(self) -> web.Application:
        self._release = asyncio.Event()  # made on the server's own loop
        app = web.Application(middlewares=[self._refuse_deleted_keys])
        app.router.add_post("/key/generate", self._generate_key)
        app.router.add_post("/key/update", self._update_key)
        app.router.add_post("/key/delete", self._delete_key)
        app.router.add_get("/model/info", self._model_info)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/responses", self._responses)
        app.router.add_post("/embeddings", self._embeddings)
        app.router.add_get("/models", self._models)
        app.router.add_get("/health/liveliness", self._liveliness)
        return app

    def start(self) -> FakeLiteLLM:
        super().start()
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self.release()  # stalled streams end, so the server can shut down
        super().stop()

    def release(self) -> None:
        """Let `stall` streams go on."""
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def reset(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._new_release)
        self.requests.clear()

    def _new_release(self) -> None:
        self._release = asyncio.Event()

    def fail(self, route: str, status: int = 500) -> None:
        """The next call of `route` answers `status` in LiteLLM's error shape, changing nothing."""
        self.failures.setdefault(route, []).append(status)

    def keys_of(self, user_id: str) -> list[str]:
        """The live keys LiteLLM holds for `user_id`."""
        return [key.key for key in list(self.keys.values()) if key.user_id == user_id]

    def made_for(self, user_id: str) -> list[str]:
        """Every key made for `user_id`, deleted ones too."""
        return [key.key for key in list(self.generated) if key.user_id == user_id]

    def last(self) -> Seen:
        return self.requests[-1]

    def for_user(self, user_id: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.headers.get("X-User-ID") == user_id]

    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(
            Seen(request.path, request.method, dict(request.headers), body, list(request.headers.items()))
        )
        return body

    @web.middleware
    async def _refuse_deleted_keys(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key in self.deleted and request.path not in _KEY_ROUTES:
            message = f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{key[-4:]}"
            return litellm_error(401, message, "auth_error", "None")
        return await handler(request)

    async def _admin(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The body of a key request from the master key, or LiteLLM's refusal."""
        body = await self._record(request) or {}
        if request.headers.get("Authorization") != f"Bearer {self.master_key}":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{key[-4:]}"
            return litellm_error(401, message, "auth_error", "None")
        if self.failures.get(request.path):
            status = self.failures[request.path].pop(0)
            return litellm_error(
                status, f"litellm.proxy.proxy_server.{request.path}(): Exception occured", "internal_server_error"
            )
        return body

    async def _generate_key(self, request: web.Request) -> web.Response:
        body = await self._admin(request)
        if isinstance(body, web.Response):
            return body
        key = "sk-" + secrets.token_urlsafe(16)
        record = VirtualKey(key, body.get("user_id"), list(body.get("models") or []), dict(body.get("metadata") or {}))
        self.keys[key] = record
        self.generated.append(record)
        token = hashlib.sha256(key.encode()).hexdigest()
        answer = {
            "key": key,
            "key_name": f"sk-...{key[-4:]}",
            "token": token,
            "token_id": token,
            "user_id": record.user_id,
            "models": record.models,
            "metadata": record.metadata,
            "expires": None,
            "max_budget": None,
            "spend": 0.0,
        }
        return web.json_response(answer)

    async def _update_key(self, request: web.Request) -> web.Response:
        body = await self._admin(request)
        if isinstance(body, web.Response):
            return body
        record = self.keys.get(str(body.get("key")))
        if record is None:
            return litellm_error(404, "Key not found.", "not_found_error", "key")
        if "models" in body:
            record.models = list(body["models"] or [])
        return web.json_response({"key": record.key, **{k: v for k, v in body.items() if k != "key"}})

    async def _delete_key(self, request: web.Request) -> web.Response:
        body = await self._admin(request)
        if isinstance(body, web.Response):
            return body
        wanted = [str(key) for key in body.get("keys") or []]
        found = [key for key in wanted if key in self.keys]
        if not found:
            return litellm_error(404, "{'error': 'No keys found'}", "internal_server_error")
        for key in found:
            del self.keys[key]
            self.deleted.add(key)
        return web.json_response({"deleted_keys": wanted})

    async def _model_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}"},
                "model_info": {
                    "id": hashlib.sha256(name.encode()).hexdigest(),
                    "mode": "embedding" if "embedding" in name else "chat",
                    "input_cost_per_token": None,
                    "output_cost_per_token": None,
                    **PRICES.get(name, {}),
                },
            }
            for name in MODELS
        ]
        return web.json_response({"data": data})

    async def _liveliness(self, request: web.Request) -> web.Response:
        return web.json_response("I'm alive!")

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [{"id": name, "object": "model", "created": 1677610602, "owned_by": "openai"} for name in MODELS]
        return web.json_response({"data": data, "object": "list"})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request) or {}
        usage = {"prompt_tokens": 6, "total_tokens": 6}
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]
        return web.json_response({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        usage = {
            "input_tokens": 13,
            "output_tokens": 9,
            "total_tokens": 22,
            "input_tokens_details": {"cached_tokens": 2},
        }
        response = {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "model": body.get("model"),
            "usage": usage,
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}],
        }
        if not body.get("stream"):
            return web.json_response(response)
        stream = await self._open_stream(request)
        delta = {"type": "response.output_text.delta", "delta": "Hi"}
        await stream.write(b"event: response.output_text.delta\ndata: " + json.dumps(delta).encode() + b"\n\n")
        completed = {"type": "response.completed", "response": response}
        await stream.write(b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n")
        await stream.write_eof()
        self.finished_streams += 1
        return stream

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        model = str(body.get("model"))
        if model.startswith("error-"):
            status = int(model.removeprefix("error-"))
            error = {
                "message": f"litellm.Error: mock {status}",
                "type": "internal_server_error",
                "param": None,
                "code": str(status),
            }
            return web.json_response({"error": error}, status=status, headers={"x-litellm-call-id": "abc"})
        if model == "key-401":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{key[-4:]}"
            error = {"message": message, "type": "auth_error", "param": "None", "code": "401"}
            return web.json_response({"error": error}, status=401)
        if model == "hang":
            await asyncio.sleep(3600)
        if model.startswith("letta-"):
            return await self._letta_turn(request, body)
        if model == "garbage":
            if not body.get("stream"):
                return web.Response(body=b"<html>502 Bad Gateway</html>", content_type="application/json")
            stream = await self._open_stream(request)
            await stream.write(b'data: {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n')
            await stream.write(b'data: {"id": "chatcmpl-1", "choi')
            return stream
        if body.get("stream"):
            return await self._chat_stream(request, body)
        answer: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}],
        }
        if model == "null-details":
            answer["usage"] = {
                **USAGE,
                "prompt_tokens_details": {"cached_tokens": None, "audio_tokens": None},
                "completion_tokens_details": None,
            }
        elif model.startswith("tokens-"):
            answer["usage"] = sized_usage(model)
        elif model != "no-usage":
            answer["usage"] = dict(USAGE)
        return web.json_response(
            answer,
            headers={
                "x-litellm-model-api-base": "https://api.openai.com",
                "set-cookie": "session=1",
                "access-control-allow-origin": "*",
            },
        )

    async def _letta_turn(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body["model"])
        if model.startswith("letta-slow-"):
            await asyncio.sleep(float(model.removeprefix("letta-slow-")))
        tools = {tool["function"]["name"]: tool["function"] for tool in body.get("tools") or []}
        messages = body.get("messages") or []
        # Searched already in this turn: a tool result after the user's last own message (Letta
        # 0.11 follows a tool result with a heartbeat, which is not the user's).
        asked = max(
            (i for i, m in enumerate(messages) if m.get("role") == "user" and "heartbeat" not in str(m.get("content"))),
            default=0,
        )
        searched = any(m.get("role") == "tool" for m in messages[asked:])
        call: dict[str, str] | None = None
        if not searched and "conversation_search" in tools and model == "letta-loop":
            call = _tool_call(tools["conversation_search"], query="hello", request_heartbeat=True)
        elif "send_message" in tools:
            call = _tool_call(tools["send_message"], message=LETTA_ANSWER)
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": None}, "completion_tokens_details": None}
        tool_call = {"id": f"call_{len(self.requests)}", "type": "function", "function": call}
        content = None if call else LETTA_ANSWER
        if not body.get("stream"):
            message = {"role": "assistant", "content": content, **({"tool_calls": [tool_call]} if call else {})}
            choice = {"index": 0, "finish_reason": "tool_calls" if call else "stop", "message": message}
            answer = {"id": "chatcmpl-l", "object": "chat.completion", "created": 0, "model": model}
            return web.json_response({**answer, "choices": [choice], "usage": usage})
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": content}]
        if call:
            deltas.append(
                {"tool_calls": [{**tool_call, "index": 0, "function": {"name": call["name"], "arguments": ""}}]}
            )
            arguments = call["arguments"]  # in small pieces, as a model streams them
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments[at : at + 7]}}]}
                for at in range(0, len(arguments), 7)
            ]
        chunks: list[dict[str, Any]] = [{"index": 0, "delta": delta} for delta in deltas]
        chunks.append({"index": 0, "delta": {}, "finish_reason": "tool_calls" if call else "stop"})
        stream = await self._open_stream(request)
        head = {"id": "chatcmpl-l", "object": "chat.completion.chunk", "created": 0, "model": model}
        for choice in chunks:
            await stream.write(_sse({**head, "choices": [choice]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            await stream.write(_sse({**head, "choices": [], "usage": usage}))
        await stream.write(b"data: [DONE]\n\n")
        await stream.write_eof()
        self.finished_streams += 1
        return stream

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        return stream

    async def _chat_stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body["model"])
        stream = await self._open_stream(request)
        words = STREAM_WORDS * 4 if model == "slow-stream" else STREAM_WORDS

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, **({"finish_reason": finish} if finish else {})}],
            }
            if usage is not None:
                data["usage"] = usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            for index, word in enumerate(words):
                await stream.write(chunk({"content": word}))
                if model == "stall" and index == 0:
                    assert self._release is not None
                    await self._release.wait()
                if model == "slow-stream":
                    await asyncio.sleep(0.05)
                if model == "drop" and index == 1:
                    assert request.transport is not None
                    request.transport.close()
                    return stream
            await stream.write(chunk({}, finish="stop"))
            include_usage = (body.get("stream_options") or {}).get("include_usage")
            if include_usage and model != "no-usage":
                completion = len(words)
                usage: dict[str, Any] = {
                    "prompt_tokens": 11,
                    "completion_tokens": completion,
                    "total_tokens": 11 + completion,
                }
                if model == "null-details":
                    usage["prompt_tokens_details"] = {"cached_tokens": None}
                if model.startswith("tokens-"):
                    usage = sized_usage(model)
                await stream.write(chunk({}, usage=usage))
            await stream.write(b"data: [DONE]\n\n")
            await stream.write_eof()
            self.finished_streams += 1
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return stream
