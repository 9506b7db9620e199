"""The agent LLM routes (SPEC §5): admit through the chain, forward, relay, settle.

Every admitted call leaves exactly one ledger row: it is written before the upstream sees the
call and settled in a `finally`, whatever happens to the client, the upstream or the process.
The chain's policies are released after it, against what the call cost.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from agent_gateway import headers
from agent_gateway.asgi import send_bytes
from agent_gateway.errors import GatewayError, UpstreamError, UpstreamInvalid, UpstreamKeyRejected
from agent_gateway.llm.context import RequestContext
from agent_gateway.llm.forwarding import upstream_body, upstream_headers
from agent_gateway.llm.metering import BillingOutcome, StreamMeter, read_usage, scrub_usage, streamed_text_bytes
from agent_gateway.ops import metrics
from agent_gateway.policies import Chain
from agent_gateway.settings import Settings
from agent_gateway.stores.ledger import Ledger, LedgerEntry
from agent_gateway.stores.response_cache import ResponseCache
from agent_gateway.streaming import StreamPump
from agent_gateway.types import Send
from agent_gateway.upstream.client import UpstreamClient, UpstreamResponse

_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
MODELS_CACHE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LLMRoute:
    name: str  # chat, responses, embeddings, models: the label in metrics, logs and the ledger
    method: str
    upstream_path: str
    chain: Chain


class AgentRelay:
    def __init__(
        self, settings: Settings, upstream: UpstreamClient, ledger: Ledger, pump: StreamPump, cache: ResponseCache
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.ledger = ledger
        self.pump = pump
        self.cache = cache  # the user's model list, briefly (SPEC §6)
        self._json_timeout = aiohttp.ClientTimeout(
            sock_read=settings.llm_timeout, sock_connect=settings.request_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.request_timeout, sock_read=settings.stream_idle_timeout
        )
        self._models_timeout = aiohttp.ClientTimeout(total=settings.request_timeout)

    async def handle(self, route: LLMRoute, ctx: RequestContext, send: Send) -> None:
        """Serve one call; a refusal or failure before the answer starts is raised, for the dispatcher to render."""
        async with route.chain.admit(ctx):
            if route.name == "models":
                await self._models(ctx, send)
            else:
                await self._call(route, ctx, send)

    async def _call(self, route: LLMRoute, ctx: RequestContext, send: Send) -> None:
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
        await self.ledger.admit_durably(entry)
        ctx.entry = entry
        outcome = BillingOutcome()
        try:
            if ctx.stream:
                await self._relay_stream(route, ctx, body, client_wants_usage, send, outcome)
            else:
                await self._relay_json(route, ctx, body, send, outcome)
        except GatewayError as error:
            outcome.fail(error.status_code)
            if not outcome.started:
                raise
        finally:
            self._settle(ctx, entry, outcome)

    async def _open(self, route: LLMRoute, ctx: RequestContext, body: bytes, *, stream: bool) -> UpstreamResponse:
        return await self.upstream.open(
            "POST",
            route.upstream_path,
            headers=upstream_headers(ctx),
            body=body,
            timeout=self._stream_timeout if stream else self._json_timeout,
            headers_within=self.settings.request_timeout if stream else None,
            breaker=ctx.breaker,
            user=ctx.user_id,
        )

    async def _relay_json(
        self, route: LLMRoute, ctx: RequestContext, body: bytes, send: Send, outcome: BillingOutcome
    ) -> None:
        response = await self._open(route, ctx, body, stream=False)
        outcome.answered(response.status)
        await self._send_whole(route, ctx, response, send, outcome)

    async def _send_whole(
        self, route: LLMRoute, ctx: RequestContext, response: UpstreamResponse, send: Send, outcome: BillingOutcome
    ) -> None:
        """An answer passed on as a whole: JSON, an error, or JSON to a stream request."""
        content = await response.read()
        if response.status in (401, 403):
            raise UpstreamKeyRejected()
        if response.status < 400:
            content = self._metered_json(route, content, outcome)
        outcome.started = True
        answer = headers.to_client(response.raw_headers, headers.LLM_TO_CLIENT)
        answer.append((b"content-length", str(len(content)).encode()))
        await send_bytes(send, response.status, answer + ctx.response_headers, content)

    def _metered_json(self, route: LLMRoute, content: bytes, outcome: BillingOutcome) -> bytes:
        """Read the usage; give Letta a `usage` it accepts (no nulls; zeros when missing)."""
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):  # relayed as a 200, the client would take garbage for an answer
            outcome.answer_bytes = len(content)
            raise UpstreamInvalid("The upstream answered 2xx with a body that is not a JSON object.")
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
        route: LLMRoute,
        ctx: RequestContext,
        body: bytes,
        client_wants_usage: bool,
        send: Send,
        outcome: BillingOutcome,
    ) -> None:
        response = await self._open(route, ctx, body, stream=True)
        outcome.answered(response.status)
        if response.status in (401, 403) or response.status >= 400 or response.content_type != "text/event-stream":
            await self._send_whole(route, ctx, response, send, outcome)
            return
        meter = outcome.meter = StreamMeter(drop_forced_usage=not client_wants_usage)
        answer = [h for h in headers.to_client(response.raw_headers, headers.LLM_TO_CLIENT) if h[0] != b"content-type"]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers.SSE + answer + ctx.response_headers,
            }
        )
        outcome.started = True

        def first_byte() -> None:
            metrics.child(metrics.TIME_TO_FIRST_BYTE, ctx.route).observe(time.perf_counter() - ctx.started)

        await self.pump.run(response, send, ctx.receive, ctx.request_id, meter=meter, on_first=first_byte)

    def _settle(self, ctx: RequestContext, entry: LedgerEntry, outcome: BillingOutcome) -> None:
        usage = outcome.final_usage(ctx.prompt_estimate)
        if self.ledger.settle(entry, outcome.status, usage):
            ctx.usage = usage
            if usage.total_tokens:
                metrics.child(metrics.TOKENS, ctx.model_label, "prompt").inc(usage.prompt_tokens)
                metrics.child(metrics.TOKENS, ctx.model_label, "completion").inc(usage.completion_tokens)

    async def model_info(self, key: str) -> list[dict[str, Any]]:
        """LiteLLM's `/model/info` as the key sees it (mode, context window, prices); [] if it cannot say."""
        auth = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
        try:
            status, found = await self.upstream.get_json("/model/info", self.settings.request_timeout, auth)
        except GatewayError:
            return []
        data = found.get("data") if status == 200 and isinstance(found, dict) else None
        return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []

    async def _models(self, ctx: RequestContext, send: Send) -> None:
        """LiteLLM's model list as the user's key sees it, filtered to their allow-list; kept a minute."""
        cache_key = _models_cache_key(ctx)
        cached = await self.cache.get(ctx.user_id, cache_key)
        if cached is not None:
            answer = [(b"content-type", cached[0]), (b"content-length", str(len(cached[1])).encode())]
            await send_bytes(send, 200, answer + [(b"x-cache", b"hit")] + ctx.response_headers, cached[1])
            return
        response = await self.upstream.open(
            "GET", "/models", headers=upstream_headers(ctx), timeout=self._models_timeout
        )
        content = await response.read()
        if response.status in (401, 403):
            raise UpstreamKeyRejected()
        allowed = ctx.profile.allowed_models if ctx.profile else None
        if response.status == 200 and allowed is not None:
            try:
                payload = orjson.loads(content)
                payload["data"] = [model for model in payload["data"] if model.get("id") in allowed]
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                raise UpstreamError("LiteLLM sent a malformed model list.") from None
            content = orjson.dumps(payload)
        if response.status == 200:
            await self.cache.put(ctx.user_id, cache_key, (b"application/json", content), MODELS_CACHE_SECONDS)
        answer = headers.to_client(response.raw_headers, headers.LLM_TO_CLIENT)
        answer.append((b"content-length", str(len(content)).encode()))
        await send_bytes(send, response.status, answer + ctx.response_headers, content)


def _models_cache_key(ctx: RequestContext) -> str:
    """The list depends on the user's key and allow-list: a change to either reads a new entry, at once."""
    profile = ctx.profile
    allowed = ",".join(sorted(profile.allowed_models)) if profile and profile.allowed_models is not None else "*"
    key = profile.litellm_key if profile else ""
    return "models:" + hashlib.blake2b(f"{key}\0{allowed}".encode(), digest_size=8).hexdigest()
