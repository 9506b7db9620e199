"""Which headers cross the gateway, each way: allow-lists, never deny-lists (SPEC §5.7-8, §6).

A client's own headers never reach an upstream beyond these lists (no cookies, no
`x-litellm-*`, no Letta `user_id`/`actor`, no password header of Letta's); the credentials
the upstream needs are the gateway's to add. An upstream's headers never reach a client
beyond the answer lists (no `Set-Cookie`, no `Access-Control-*`, no proxy internals).

A caller's `traceparent`/`tracestate` pass on as sent (SPEC §7: a W3C `traceparent` is passed
on) unless tracing is on: then the upstream gets the gateway's own context, a child of the
caller's (ops/tracing.py).
"""

from __future__ import annotations

from agent_gateway.types import Headers

# LLM bodies are JSON the gateway writes itself, so it names their Content-Type too.
CLIENT_TO_LLM = frozenset({b"accept", b"traceparent", b"tracestate"})
# Services (Letta, AMS) read the client's body as sent, and resume a stream from where the client got to.
CLIENT_TO_SERVICE = CLIENT_TO_LLM | {b"content-type", b"last-event-id"}

LLM_TO_CLIENT = frozenset(
    {
        b"content-type",
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",
        b"openai-model",
        b"openai-processing-ms",
        b"openai-version",
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-requests",
        b"x-ratelimit-reset-tokens",
    }
)
# `location` only on a redirect, and only rewritten onto the gateway (frontend/passthrough.py).
SERVICE_TO_CLIENT = frozenset(
    {b"content-type", b"content-disposition", b"cache-control", b"etag", b"last-modified", b"retry-after"}
)
SSE: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def from_client(headers: Headers, allowed: frozenset[bytes]) -> dict[str, str]:
    """The client's headers that may go upstream; credentials are added by the caller."""
    return {name.decode(): value.decode("latin-1") for name, value in headers if name in allowed}


def to_client(raw: tuple[tuple[bytes, bytes], ...], allowed: frozenset[bytes]) -> Headers:
    """An upstream answer's headers a client may see."""
    return [(name.lower(), value) for name, value in raw if name.lower() in allowed]


def as_user(headers: dict[str, str], bearer: str, user_id: str, request_id: str) -> dict[str, str]:
    """`headers` with the credentials of the call: the user's own key or token, their id, the request's id."""
    headers["Authorization"] = f"Bearer {bearer}"
    headers["X-User-ID"] = user_id
    headers["X-Request-ID"] = request_id
    return headers
