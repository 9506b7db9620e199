"""OpenTelemetry traces, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `otel` extra is installed
(`pip install 'agent-gateway[otel]'`): a server span per request, named by its route template, and
a client span per upstream call, exported over OTLP/HTTP.

A caller's `traceparent` is continued, and upstream calls carry the gateway's own (its client
span's), so LiteLLM's or Letta's spans hang under the gateway's. Spans carry methods, route
templates, statuses and upstream names: never a path with a user id, a header, a key or a body;
of a failure only its type (an exception's message may quote a URL or a header). Off, the
request path pays one `is None` check (`active`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind

log = logging.getLogger("agent_gateway.tracing")
_PROPAGATED = (b"traceparent", b"tracestate")
# At stop, what is still batched gets this long to reach the collector: one that is down or slow
# must not hold the gateway's exit (the exporter retries for 10 s per batch, and there may be two).
FLUSH_SECONDS = 2.0


class Tracing:
    def __init__(self) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the exporter's OTEL_* settings apply as usual.
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "agent-gateway")})
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # stopped by `stop`
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("agent_gateway")
        self._propagate = propagate
        self._server, self._client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR

    @contextlib.contextmanager
    def _span(self, name: str, kind: SpanKind, context: Context | None = None) -> Iterator[Span]:
        """A current span that, on a failure, keeps the exception's type and nothing of its message."""
        with self._tracer.start_as_current_span(
            name, context=context, kind=kind, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(self._error, type(exc).__name__)
                raise

    @contextlib.contextmanager
    def request(self, scope: Mapping[str, Any]) -> Iterator[Span]:
        """The request's span, a child of the caller's `traceparent` if it sent one."""
        carrier = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in _PROPAGATED}
        method = scope["method"]
        with self._span(method, self._server, self._propagate.extract(carrier)) as span:
            span.set_attribute("http.request.method", method)
            yield span

    def answered(self, span: Span, method: str, route: str, status: int) -> None:
        """Names the request's span by its route template once routed (`status` 0: none recorded)."""
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a client's 4xx is not the server's error (OpenTelemetry's HTTP conventions)
            span.set_status(self._error)

    def upstream_answered(self, span: Span, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:  # for the calling side any 4xx is an error too
            span.set_status(self._error)

    @contextlib.contextmanager
    def upstream(self, name: str, method: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
        """An upstream call's span (until its answer's headers); `headers` get its `traceparent`."""
        with self._span(f"{method} {name}", self._client) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("peer.service", name)
            for header in _PROPAGATED:  # a caller's own context never passes on beside ours
                headers.pop(header.decode(), None)
            self._propagate.inject(headers)
            yield span

    def shutdown(self) -> None:
        """Exports what is still batched, waiting at most `FLUSH_SECONDS` (the exporter's thread is a daemon)."""
        flush = threading.Thread(target=self._provider.shutdown, name="otel-flush", daemon=True)
        flush.start()
        flush.join(FLUSH_SECONDS)
        if flush.is_alive():
            log.warning("spans not exported at stop: the OTLP endpoint did not take them in time")


active: Tracing | None = None


def start_from_environment() -> Tracing | None:
    """Tracing as the environment asks; sets `active`."""
    global active
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":  # OpenTelemetry's own off switch
        return None
    try:
        active = Tracing()
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: no traces")
        return None
    return active


def stop() -> None:
    global active
    if active is not None:
        active.shutdown()
        active = None
