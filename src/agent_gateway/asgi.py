"""The few raw-ASGI helpers the hot path needs, so it does not pay for a framework."""

from __future__ import annotations

import orjson

from agent_gateway.errors import BadRequest, BodyTooLarge, GatewayError, render_error
from agent_gateway.types import Headers, Receive, Send

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


async def read_body(receive: Receive, cap: int, content_length: bytes | None) -> bytes:
    """The whole request body; 413 as soon as it (or its declared length) passes `cap` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk: the same object back, no copy
