"""The agent LLM routes (SPEC §5): admit through the policy chain, forward, relay, settle.

Every admitted call leaves exactly one ledger row: it is written at admission and settled
in a `finally`, whatever happens to the client, the upstream or the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from agent_gateway import metrics
from agent_gateway.asgi import send_bytes, send_error, send_json
from agent_gateway.breaker import Breakers, CircuitBreaker, counts_as_failure
from agent_gateway.context import RequestContext
from agent_gateway.errors import (
    CircuitOpen,
    GatewayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamKeyRejected,
    UpstreamTimeout,
    sse_error_event,
)
from agent_gateway.forwarding import upstream_body, upstream_headers
from agent_gateway.policies import Policy, run_policies
from agent_gateway.settings import Settings
from agent_gateway.stores.ledger import Ledger, LedgerEntry, Usage
from agent_gateway.streams import StreamRegistry
from agent_gateway.types import Headers, Receive, Send
from agent_gateway.upstream import UpstreamClient, map_client_error, response_headers
from agent_gateway.usage import StreamMeter, estimate, read_usage, scrub_usage, streamed_text_bytes

_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@dataclass(frozen=True, slots=True)
class AgentRoute:
    name: str  # chat, responses, embeddings, models: the label in metrics, logs and the ledger
    method: str
    upstream_path: str
    policies: Sequence[Policy]


class AgentRelay:
    def __init__(self, settings: Settings, upstream: UpstreamClient, ledger: Ledger, breakers: Breakers) -> None:
        self.settings = settings
        self.upstream = upstream
        self.ledger = ledger
        self.breakers = breakers
        self.streams = StreamRegistry()
        self._json_timeout = aiohttp.ClientTimeout(
            sock_read=settings.llm_timeout, sock_connect=settings.request_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.request_timeout, sock_read=settings.stream_idle_timeout
        )
        self._models_timeout = aiohttp.ClientTimeout(total=settings.request_timeout)

    async def handle(self, route: AgentRoute, ctx: RequestContext, send: Send) -> int:
        """Serve one call; returns the status the client got."""
        try:
            await run_policies(route.policies, ctx)
            if route.name == "models":
                return await self._models(ctx, send)
        except GatewayError as error:
            await send_error(send, error, ctx.request_id, ctx.response_headers)
            return error.status_code
        return await self._call(route, ctx, send)

    async def _call(self, route: AgentRoute, ctx: RequestContext, send: Send) -> int:
        breaker = self.breakers.get(f"litellm:{ctx.model}")
        try:
            breaker.before_call()
        except CircuitOpen as error:
            for hook in ctx.settle_hooks:  # not admitted after all: give back what policies hold
                await hook(Usage())
            await send_error(send, error, ctx.request_id, ctx.response_headers)
            return error.status_code
        body, client_wants_usage = upstream_body(ctx)
        entry = LedgerEntry(
            ctx.user_id,
            route.name,
            ctx.model,
            ctx.request_id,
            reserved_tokens=ctx.reserve_tokens,
            id=ctx.call_id,
            admitted_at=ctx.admitted_at,
        )
        entry.usage.prompt_tokens = ctx.prompt_estimate
        self.ledger.admit(entry)
        ctx.entry = entry
        outcome = _Outcome(ctx, breaker)
        try:
            if ctx.stream:
                await self._relay_stream(route, ctx, body, client_wants_usage, send, outcome)
            else:
                await self._relay_json(route, ctx, body, send, outcome)
        except GatewayError as error:
            outcome.fail(error)
            if isinstance(error, UpstreamError | UpstreamTimeout):
                breaker.failed()
            if not outcome.started:
                await send_error(send, error, ctx.request_id, ctx.response_headers)
        finally:
            breaker.release_probe()  # a probe that ended with no verdict lets the next one try
            await self._settle(ctx, entry, outcome)
        return outcome.status

    async def _relay_json(
        self, route: AgentRoute, ctx: RequestContext, body: bytes, send: Send, outcome: _Outcome
    ) -> None:
        response = await self.upstream.open(
            "POST", route.upstream_path, headers=upstream_headers(ctx), body=body, timeout=self._json_timeout
        )
        try:
            outcome.answered(response.status)
            content = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise map_client_error(exc, self.upstream.name) from None
        finally:
            response.release()
        status = response.status
        headers = response_headers(response)
        outcome.upstream_answered(bool(content))
        if status in (401, 403):
            raise UpstreamKeyRejected()
        if status < 400:
            content = self._metered_json(route, content, outcome)
        outcome.started = True
        headers.append((b"content-length", str(len(content)).encode()))
        await send_bytes(send, status, headers + ctx.response_headers, content)

    def _metered_json(self, route: AgentRoute, content: bytes, outcome: _Outcome) -> bytes:
        """Read the usage; give Letta a `usage` it accepts (no nulls; zeros when missing)."""
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            return content
        if not isinstance(payload, dict):
            return content
        usage = payload.get("usage")
        outcome.usage = read_usage(usage)
        if outcome.usage is None:  # estimated from the answer's text, as a stream would be
            outcome.answer_bytes = streamed_text_bytes(content)
        if usage is None and route.name == "chat":
            payload["usage"] = dict(_ZERO_USAGE)
            return orjson.dumps(payload)
        return orjson.dumps(payload) if scrub_usage(usage) else content

    async def _relay_stream(
        self,
        route: AgentRoute,
        ctx: RequestContext,
        body: bytes,
        client_wants_usage: bool,
        send: Send,
        outcome: _Outcome,
    ) -> None:
        response = await self.upstream.open(
            "POST",
            route.upstream_path,
            headers=upstream_headers(ctx),
            body=body,
            timeout=self._stream_timeout,
            headers_within=self.settings.request_timeout,
        )
        try:
            outcome.answered(response.status)
            if response.status in (401, 403):
                raise UpstreamKeyRejected()
            if response.status >= 400 or not response.content_type.startswith("text/event-stream"):
                # An error (or a JSON answer to a stream request) passes through as a whole.
                try:
                    content = await response.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise map_client_error(exc, self.upstream.name) from None
                outcome.upstream_answered(bool(content))
                if response.status < 400:
                    content = self._metered_json(route, content, outcome)
                outcome.started = True
                headers = [*response_headers(response), (b"content-length", str(len(content)).encode())]
                await send_bytes(send, response.status, headers + ctx.response_headers, content)
                return
            outcome.upstream_answered(True)
            self.streams.active.add(response)
            try:
                await self._pump(ctx, response, client_wants_usage, send, outcome)
            finally:
                self.streams.active.discard(response)
        finally:
            response.release()

    async def _pump(
        self,
        ctx: RequestContext,
        response: aiohttp.ClientResponse,
        client_wants_usage: bool,
        send: Send,
        outcome: _Outcome,
    ) -> None:
        meter = StreamMeter(drop_forced_usage=not client_wants_usage)
        outcome.meter = meter
        upstream_headers = [header for header in response_headers(response) if header[0] != b"content-type"]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _SSE_HEADERS + upstream_headers + ctx.response_headers,
            }
        )
        outcome.started = True
        first = True
        drained = 0
        watcher: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(None) as deadline:
                # When the client leaves, keep reading (bounded) for the usage LiteLLM bills; the
                # drain's clock starts then, not at the next upstream byte.
                drain_until = self.settings.stream_drain_seconds
                watcher = asyncio.create_task(_watch_disconnect(ctx.receive, outcome, deadline, drain_until))
                async for chunk in response.content.iter_any():
                    if outcome.client_gone:
                        drained += len(chunk)
                        meter.feed(chunk)
                        if meter.usage is not None or meter.done or drained > self.settings.stream_drain_bytes:
                            break
                        continue
                    ready = meter.feed(chunk)
                    if ready:
                        if first:
                            metrics.child(metrics.TIME_TO_FIRST_BYTE, ctx.route).observe(
                                time.perf_counter() - ctx.started
                            )
                            first = False
                        await send({"type": "http.response.body", "body": ready, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The upstream broke, went idle too long, or was cut at shutdown; a drain that ran
            # out of time lands here too, with nobody left to tell.
            if not outcome.client_gone:
                error = (
                    ServiceUnavailable("The gateway is shutting down.")
                    if self.streams.cut_off
                    else map_client_error(exc, self.upstream.name)
                )
                event = sse_error_event(error, ctx.request_id)
                await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            if watcher is not None:
                watcher.cancel()
        if not outcome.client_gone:
            await send({"type": "http.response.body", "body": meter.flush(), "more_body": False})

    async def _settle(self, ctx: RequestContext, entry: LedgerEntry, outcome: _Outcome) -> None:
        usage = outcome.final_usage(ctx.prompt_estimate)
        if self.ledger.settle(entry, outcome.status, usage):
            for hook in ctx.settle_hooks:
                await hook(usage)
            if usage.total_tokens and ctx.model:
                metrics.child(metrics.TOKENS, ctx.model, "prompt").inc(usage.prompt_tokens)
                metrics.child(metrics.TOKENS, ctx.model, "completion").inc(usage.completion_tokens)

    async def _models(self, ctx: RequestContext, send: Send) -> int:
        response = await self.upstream.open(
            "GET", "/models", headers=upstream_headers(ctx), timeout=self._models_timeout
        )
        try:
            content = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise map_client_error(exc, self.upstream.name) from None
        finally:
            response.release()
        status, headers = response.status, response_headers(response)
        if status in (401, 403):
            raise UpstreamKeyRejected()
        allowed = ctx.profile.allowed_models if ctx.profile else None
        if status == 200 and allowed is not None:
            try:
                payload = orjson.loads(content)
                payload["data"] = [model for model in payload["data"] if model.get("id") in allowed]
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                raise UpstreamError("LiteLLM sent a malformed model list.") from None
            await send_json(send, status, payload, ctx.response_headers)
            return status
        headers.append((b"content-length", str(len(content)).encode()))
        await send_bytes(send, status, headers + ctx.response_headers, content)
        return status


class _Outcome:
    """How a call ended, as far as billing is concerned."""

    __slots__ = ("answer_bytes", "breaker", "client_gone", "ctx", "has_answer", "meter", "started", "status", "usage")

    def __init__(self, ctx: RequestContext, breaker: CircuitBreaker) -> None:
        self.ctx = ctx
        self.breaker = breaker
        self.status = 0
        self.started = False
        self.client_gone = False
        self.usage: Usage | None = None
        self.meter: StreamMeter | None = None
        self.has_answer = False  # the upstream sent response headers: it may have billed
        self.answer_bytes = 0

    def upstream_answered(self, has_body: bool) -> None:
        if counts_as_failure(self.status, has_body):
            self.breaker.failed()
        else:
            self.breaker.succeeded()

    def answered(self, status: int) -> None:
        self.status = status
        self.has_answer = True

    def fail(self, error: GatewayError) -> None:
        if not self.has_answer:  # the ledger keeps the upstream's own status when there was one
            self.status = error.status_code

    def final_usage(self, prompt_estimate: int) -> Usage:
        if self.meter is not None and self.meter.usage is not None:
            return self.meter.usage
        if self.usage is not None:
            return self.usage
        if not self.has_answer:
            # Unreachable: nothing was done. Timed out: LiteLLM may still bill.
            return estimate(prompt_estimate) if self.status == 504 else Usage()
        if self.status >= 400 and self.meter is None:
            return Usage()  # refused by LiteLLM before any work: nothing billed
        # A broken or abandoned stream, an answer without usage: estimated.
        streamed = self.meter.streamed_bytes if self.meter is not None else self.answer_bytes
        return estimate(prompt_estimate, streamed)


async def _watch_disconnect(receive: Receive, outcome: _Outcome, deadline: asyncio.Timeout, drain: float) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    outcome.client_gone = True
    deadline.reschedule(asyncio.get_running_loop().time() + drain)
