"""OpenTelemetry: a real gateway exporting to an OTLP/HTTP receiver of the test's own, decoded with
OpenTelemetry's own protobuf types; the caller's trace continued and carried on to LiteLLM."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent_gateway.ops import tracing
from tests.conftest import SECRET, USER_KEY_PREFIX, add_profile, free_port, new_user, run
from tests.fakes.litellm import FakeLiteLLM
from tests.fakes.server import ThreadedServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@dataclass
class OtlpReceiver(ThreadedServer):
    """`POST /v1/traces` as an OpenTelemetry collector takes it (protobuf), every span kept."""

    spans: list[Span] = field(default_factory=list)

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def wait_for(self, count: int) -> list[Span]:
        deadline = time.monotonic() + 15
        while sum(s.trace_id.hex() == TRACE_ID for s in self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.spans)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    server.start()
    yield server
    server.stop()


def call_in_trace(gw: Any, user_id: str) -> httpx.Response:
    """A chat call made under the caller's trace context (TRACE_ID, PARENT_ID)."""
    return httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )


def spans_of_the_trace(receiver: OtlpReceiver) -> tuple[list[Span], Span, Span]:
    """The caller's trace (not the start-up's /ping): every span, the server's, the client's."""
    spans = [s for s in receiver.wait_for(2) if s.trace_id.hex() == TRACE_ID]
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    client = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    return spans, server, client


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_a_call_is_a_server_span_under_the_callers_with_a_client_span_for_litellm(
    gateway_factory: Any, litellm: FakeLiteLLM, receiver: OtlpReceiver
) -> None:
    gw = gateway_factory(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    answer = call_in_trace(gw, user_id)
    assert answer.status_code == 200

    spans, server, client = spans_of_the_trace(receiver)
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    assert server.name == "POST /api/v1/agents/{user_id}/messages/chat/completions"  # no user id in it
    assert attributes(server)["http.response.status_code"] == 200
    assert client.trace_id.hex() == TRACE_ID and client.parent_span_id == server.span_id
    assert client.name == "POST litellm" and attributes(client)["http.response.status_code"] == 200

    # LiteLLM got the gateway's own context (its client span), not the caller's.
    sent = litellm.for_user(user_id)[-1].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    everything = " ".join(f"{s.name} {attributes(s)}" for s in spans)
    assert SECRET not in everything and USER_KEY_PREFIX not in everything and user_id not in everything


def test_an_unreachable_upstream_is_an_error_span_naming_only_the_failures_type(
    gateway_factory: Any, receiver: OtlpReceiver
) -> None:
    gw = gateway_factory(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        LITELLM_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    answer = call_in_trace(gw, user_id)
    assert answer.status_code == 502

    spans, server, client = spans_of_the_trace(receiver)
    assert server.status.code == Status.STATUS_CODE_ERROR and attributes(server)["http.response.status_code"] == 502
    # The failure's type, not aiohttp's message (which names the host and may quote the request).
    assert client.status.code == Status.STATUS_CODE_ERROR and client.status.message == "UpstreamError"
    assert not any(s.events for s in spans)


def test_spans_still_batched_at_stop_are_exported(
    gateway_factory: Any, litellm: FakeLiteLLM, receiver: OtlpReceiver
) -> None:
    gw = gateway_factory(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="600000")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ).raise_for_status()
    assert receiver.spans == []  # batched for ten minutes

    assert gw.terminate() == 0
    assert {s.kind for s in receiver.spans if s.trace_id.hex() == TRACE_ID} == {
        Span.SPAN_KIND_SERVER,
        Span.SPAN_KIND_CLIENT,
    }


def test_a_collector_that_is_down_does_not_hold_the_gateways_stop(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    gw = gateway_factory(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}", OTEL_BSP_SCHEDULE_DELAY="100")
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    for _ in range(2):  # one batch being retried by the exporter, one still queued
        httpx.post(
            f"{gw.agent_base(user_id)}/chat/completions",
            headers={"Authorization": f"Bearer {SECRET}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        ).raise_for_status()
        time.sleep(0.3)

    started = time.monotonic()
    assert gw.terminate() == 0
    # The exporter alone would retry each batch for 10 s before the process could exit.
    assert time.monotonic() - started < tracing.FLUSH_SECONDS + 3
    assert "spans not exported at stop" in gw.logs()


@pytest.mark.parametrize("switched_off", [False, True], ids=["no-endpoint", "OTEL_SDK_DISABLED"])
def test_without_tracing_nothing_is_exported_and_the_callers_context_passes_on(
    gateway_factory: Any, litellm: FakeLiteLLM, receiver: OtlpReceiver, switched_off: bool
) -> None:
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ
    # OpenTelemetry's own off switch wins over an endpoint.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SDK_DISABLED": "true"} if switched_off else {}
    gw = gateway_factory(OTEL_BSP_SCHEDULE_DELAY="100", **env)
    user_id = new_user()
    run(add_profile(gw.database_url, user_id))
    caller = f"00-{TRACE_ID}-{PARENT_ID}-01"
    httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}", "traceparent": caller},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ).raise_for_status()
    assert litellm.for_user(user_id)[-1].headers["traceparent"] == caller  # as before: the header allow-list
    assert gw.terminate() == 0  # a tracing gateway would have flushed its spans by now
    assert receiver.spans == []
    assert "tracing" not in gw.logs()
