"""Prometheus metrics (SPEC §7). Labels are route templates, models and services: never users."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "gateway_requests_total", "Requests answered, by route template and status.", ["route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to the end of the answer.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Requests being served now.", registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_duration_seconds",
    "Time from sending upstream to its response headers.",
    ["upstream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total", "Upstream failures by kind.", ["upstream", "kind"], registry=REGISTRY
)
TIME_TO_FIRST_BYTE = Histogram(
    "gateway_stream_first_byte_seconds",
    "Time from request to the first streamed byte.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TOKENS = Counter("gateway_tokens_total", "Tokens metered, by model and kind.", ["model", "kind"], registry=REGISTRY)
LIMIT_REJECTIONS = Counter(
    "gateway_limit_rejections_total", "Requests refused by a limit.", ["limit"], registry=REGISTRY
)
REDIS_FALLBACKS = Counter(
    "gateway_redis_fallbacks_total",
    "Limit checks done without Redis because it failed.",
    ["component", "mode"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "gateway_circuit_breaker_open", "1 while an upstream's breaker is open.", ["upstream"], registry=REGISTRY
)


class ModelLabels:
    """Model names as label values: a name some profile's allow-list holds, else `other`.

    Clients choose model names, so a name used as-is would grow the label set (and /health)
    without bound; names an operator wrote into an allow-list are few and safe to show.
    """

    OTHER = "other"
    MAX_KNOWN = 1000

    def __init__(self) -> None:
        self._known: set[str] = set()

    def learn(self, models: frozenset[str] | None) -> None:
        if models and not models <= self._known and len(self._known) < self.MAX_KNOWN:
            self._known.update(sorted(models)[: self.MAX_KNOWN - len(self._known)])

    def label(self, model: str) -> str:
        return model if model in self._known else self.OTHER


MODEL_LABELS = ModelLabels()


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: `labels()` validates and locks on every call."""
    return metric.labels(*values)
