"""A fast fake LiteLLM (OpenAI-compatible) upstream for the benchmark.

A raw asyncio protocol on uvloop with httptools, so that it costs far less per request than
any proxy in front of it. `POST /chat/completions` answers a small `chat.completion`, or with
`"stream": true` an SSE stream of `--chunks` content chunks `--delay-ms` apart (the first one at
once), a usage chunk when `stream_options.include_usage`, then `data: [DONE]`.

Bench control (not part of LiteLLM's API, called by `bench/run.py` directly, never through a proxy):
`POST /_bench/config {"chunks": N, "delay_ms": D}` changes the stream shape for the next requests;
`GET /_bench/stats` counts requests, streams in flight and requests with an unexpected key.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson
import uvloop

CREATED = 1_700_000_000


@dataclass
class UpstreamState:
    chunks: int
    delay_ms: float
    expect_key: bytes | None
    requests: int = 0
    streams: int = 0
    active: int = 0
    bad_auth: int = 0
    _templates: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)

    def stream_events(self, model: str) -> list[bytes]:
        """The content chunks of one stream as HTTP chunks, built once per model and shape."""
        key = (model, self.chunks)
        events = self._templates.get(key)
        if events is None:
            events = []
            for i in range(self.chunks):
                delta: dict[str, Any] = {"content": f"tok{i} "}
                if i == 0:
                    delta["role"] = "assistant"
                chunk = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": "stop" if i == self.chunks - 1 else None}
                    ],
                }
                events.append(http_chunk(b"data: " + orjson.dumps(chunk) + b"\n\n"))
            self._templates[key] = events
        return events


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    # LiteLLM reports null token details; the gateway must strip them (SPEC §5.8).
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": None},
        "completion_tokens_details": None,
    }


def completion_body(model: str, prompt_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage_of(prompt_tokens, 7),
        }
    )


def http_response(status: int, reason: str, content_type: bytes, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        status,
        reason.encode(),
        content_type,
        len(body),
        b"" if keep_alive else b"connection: close\r\n",
    )
    return head + body


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
STREAM_HEAD_CLOSE = STREAM_HEAD[:-2] + b"connection: close\r\n\r\n"
DONE = http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests are handled one at a time."""

    def __init__(self, state: UpstreamState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.auth: bytes | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(http_response(400, "Bad Request", b"text/plain", b"bad request", keep_alive=False))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.auth = None
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/chat/completions", b"/v1/chat/completions"):
            self._chat(keep_alive)
        elif method == b"POST" and path == b"/_bench/config":
            self._config(keep_alive)
        elif method == b"GET" and path == b"/_bench/stats":
            stats = {
                "requests": self.state.requests,
                "streams": self.state.streams,
                "active": self.state.active,
                "bad_auth": self.state.bad_auth,
            }
            self._write(http_response(200, "OK", b"application/json", orjson.dumps(stats), keep_alive))
        elif method == b"GET" and path == b"/health/liveliness":
            self._write(http_response(200, "OK", b"application/json", b'"I\'m alive!"', keep_alive))
        elif method == b"GET" and path in (b"/models", b"/v1/models"):
            models = {"object": "list", "data": [{"id": m, "object": "model"} for m in ("gpt-4o-mini", "bench-model")]}
            self._write(http_response(200, "OK", b"application/json", orjson.dumps(models), keep_alive))
        else:
            self._write(http_response(404, "Not Found", b"application/json", b'{"error":"not found"}', keep_alive))
        if not keep_alive:
            self._close()

    def _chat(self, keep_alive: bool) -> None:
        state = self.state
        state.requests += 1
        if state.expect_key is not None and self.auth != b"Bearer " + state.expect_key:
            state.bad_auth += 1
            err = b'{"error":{"message":"Authentication Error","type":"auth_error","code":"401"}}'
            self._write(http_response(401, "Unauthorized", b"application/json", err, keep_alive))
            return
        raw = b"".join(self.body)
        try:
            request = orjson.loads(raw)
            model = str(request["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            err = b'{"error":{"message":"bad body","type":"invalid_request_error","code":"400"}}'
            self._write(http_response(400, "Bad Request", b"application/json", err, keep_alive))
            return
        prompt_tokens = max(1, len(raw) // 4)
        if request.get("stream") is True:
            options = request.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(model, prompt_tokens, include_usage, keep_alive)
        else:
            body = completion_body(model, prompt_tokens)
            self._write(http_response(200, "OK", b"application/json", body, keep_alive))

    def _stream(self, model: str, prompt_tokens: int, include_usage: bool, keep_alive: bool) -> None:
        state = self.state
        state.streams += 1
        events = state.stream_events(model)
        tail = b""
        if include_usage:
            usage = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "choices": [],
                "usage": usage_of(prompt_tokens, len(events)),
            }
            tail = http_chunk(b"data: " + orjson.dumps(usage) + b"\n\n")
        tail += DONE
        head = STREAM_HEAD if keep_alive else STREAM_HEAD_CLOSE
        if state.delay_ms <= 0:
            # A fast model: the whole stream at once (a proxy reads it in one or a few bursts either way).
            self._write(b"".join([head, *events, tail]))
            return
        assert self.transport is not None
        self.transport.pause_reading()
        state.active += 1
        asyncio.get_running_loop().create_task(self._slow_stream(head, events, tail, state.delay_ms / 1000))

    async def _slow_stream(self, head: bytes, events: list[bytes], tail: bytes, delay: float) -> None:
        """The first chunk at once, then one every `delay` seconds; usage and [DONE] with the last."""
        try:
            self._write(head + events[0])
            for i, event in enumerate(events[1:], start=2):
                await asyncio.sleep(delay)
                if self.transport is None or self.transport.is_closing():
                    return
                self._write(event + tail if i == len(events) else event)
            if len(events) == 1:
                self._write(tail)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        finally:
            self.state.active -= 1

    def _config(self, keep_alive: bool) -> None:
        try:
            config = orjson.loads(b"".join(self.body))
            self.state.chunks = max(1, int(config.get("chunks", self.state.chunks)))
            self.state.delay_ms = float(config.get("delay_ms", self.state.delay_ms))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            self._write(http_response(400, "Bad Request", b"text/plain", b"bad config", keep_alive))
            return
        self._write(http_response(200, "OK", b"application/json", b'{"ok":true}', keep_alive))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, state: UpstreamState) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay between stream chunks")
    parser.add_argument("--expect-key", default=None, help="answer 401 to any other Bearer key")
    args = parser.parse_args()
    state = UpstreamState(
        chunks=max(1, args.chunks),
        delay_ms=args.delay_ms,
        expect_key=args.expect_key.encode() if args.expect_key else None,
    )
    uvloop.run(serve(args.host, args.port, state))


if __name__ == "__main__":
    main()
