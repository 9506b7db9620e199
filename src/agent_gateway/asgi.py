"""The few raw-ASGI helpers the hot path needs, so it does not pay for a framework."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from agent_gateway.errors import BadRequest, BodyTooLarge, GatewayError, RequestTimeout, render_error
from agent_gateway.types import Headers, Message, Receive, Send

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


@dataclass(frozen=True, slots=True)
class BodyDeadline:
    """How long a body may take: `seconds` in all, or longer while it keeps arriving at `min_rate`
    bytes a second on average (BODY_TIMEOUT, MIN_BODY_RATE). Past it: 408, and the slot is free."""

    seconds: float = 30.0
    min_rate: int = 16 * 1024

    def start(self) -> float:
        return asyncio.get_running_loop().time()

    async def receive(self, receive: Receive, started: float, received: int) -> Message:
        try:
            async with asyncio.timeout_at(started + max(self.seconds, received / self.min_rate)):
                return await receive()
        except TimeoutError:
            raise RequestTimeout("The request body did not arrive in time.") from None


async def read_body(receive: Receive, cap: int, content_length: bytes | None, deadline: BodyDeadline) -> bytes:
    """The whole request body; 413 as soon as it (or its declared length) passes `cap` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    started = deadline.start()
    while True:
        message = await deadline.receive(receive, started, size)
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk: the same object back, no copy


async def capped_body(receive: Receive, cap: int, deadline: BodyDeadline) -> AsyncIterator[bytes]:
    """The request body as it arrives, for an upload passed on unread: 413 past `cap` bytes,
    400 when the client leaves before its end (a cut-off upload must not look whole upstream)."""
    size = 0
    started = deadline.start()
    while True:
        message = await deadline.receive(receive, started, size)
        if message["type"] == "http.disconnect":
            raise BadRequest("The client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge()
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
