"""The few raw-ASGI helpers the hot path needs, so it does not pay for a framework."""

from __future__ import annotations

import orjson

from agent_gateway.errors import GatewayError, render_error
from agent_gateway.types import Headers, Send

JSON = b"application/json"


async def send_bytes(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, headers: Headers | None = None) -> None:
    body = orjson.dumps(payload)
    base = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    await send_bytes(send, status, base + (headers or []), body)


async def send_error(send: Send, error: GatewayError, request_id: str, extra: Headers | None = None) -> None:
    status, headers, body = render_error(error, request_id)
    await send_bytes(send, status, headers + (extra or []), body)
