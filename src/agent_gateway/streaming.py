"""The one stream pump: an upstream answer relayed to the client as it arrives, agent streams and
pass-through streams alike.

It watches for the client leaving; after that, a metered stream is drained (bounded by
STREAM_DRAIN_SECONDS and STREAM_DRAIN_BYTES, the clock starting at the disconnect) for the
usage LiteLLM bills, and any other stream is cut at once. A failure after the first byte can
only be an SSE error event (SPEC §8), and a stream still running when the shutdown grace ends
gets one saying so. `StreamRegistry` knows every stream in flight, for that shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from agent_gateway.errors import GatewayError, ServiceUnavailable, UpstreamInvalid, sse_error_event
from agent_gateway.types import Receive, Send
from agent_gateway.upstream.client import UpstreamResponse


class StreamRegistry:
    def __init__(self) -> None:
        self.active: set[UpstreamResponse] = set()
        self.cut_off = False

    def cut_all(self) -> None:
        """Close every upstream stream; each pump then ends its client's stream with an error event."""
        self.cut_off = True
        for response in list(self.active):
            response.close()


class Meter(Protocol):
    """What reads a stream on its way (`llm/metering.py`): the bytes to send now, and whether the
    usage is known (after which a drain may stop)."""

    done: bool

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    @property
    def finished(self) -> bool: ...


class StreamPump:
    def __init__(self, registry: StreamRegistry, drain_seconds: float, drain_bytes: int) -> None:
        self.registry = registry
        self.drain_seconds = drain_seconds
        self.drain_bytes = drain_bytes

    async def run(
        self,
        response: UpstreamResponse,
        send: Send,
        receive: Receive,
        request_id: str,
        *,
        meter: Meter | None = None,
        on_first: Callable[[], None] | None = None,
        error_events: bool = True,
    ) -> bool:
        """Relay `response`'s body (its headers are sent already); True if the client left before the end."""
        gone = failed = False
        drained = 0
        loop = asyncio.get_running_loop()
        self.registry.active.add(response)
        try:
            async with asyncio.timeout(None) as deadline:

                async def watch() -> None:
                    nonlocal gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    gone = True
                    if meter is None:
                        response.close()  # nothing more to read for: stop now
                    else:  # read on for the usage; the drain's clock starts now, not at the next byte
                        deadline.reschedule(loop.time() + self.drain_seconds)

                watcher = asyncio.create_task(watch())
                try:
                    async for chunk in response.chunks():
                        if gone:
                            if meter is None:
                                break
                            drained += len(chunk)
                            meter.feed(chunk)
                            if meter.finished or drained > self.drain_bytes:
                                break
                            continue
                        ready = meter.feed(chunk) if meter is not None else chunk
                        if ready:
                            if on_first is not None:
                                on_first()
                                on_first = None
                            await send({"type": "http.response.body", "body": ready, "more_body": True})
                finally:
                    watcher.cancel()
        except (GatewayError, TimeoutError) as failure:
            # The upstream broke, went idle too long, or was cut at shutdown; a drain that ran out
            # of time lands here too, with nobody left to tell.
            failed = True
            if not gone and error_events:
                error = failure if isinstance(failure, GatewayError) else ServiceUnavailable()
                if self.registry.cut_off:
                    error = ServiceUnavailable("The gateway is shutting down.")
                await send(
                    {"type": "http.response.body", "body": sse_error_event(error, request_id), "more_body": True}
                )
        finally:
            self.registry.active.discard(response)
            response.release()
        if not gone:
            tail = meter.flush() if meter is not None else b""
            if meter is not None and not meter.finished and not failed:
                # Ended cleanly but never said it was done (no usage, no [DONE]): cut short or not SSE.
                tail = sse_error_event(UpstreamInvalid("The upstream's stream ended unfinished."), request_id)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        return gone
