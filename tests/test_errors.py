"""Every refusal the gateway can make is one of SPEC §8's, in OpenAI's shape."""

from __future__ import annotations

import orjson
import pytest

from agent_gateway import errors

# SPEC §8: status -> its type, and the codes it names (None: any code of the gateway's own)
SPEC_8: dict[int, tuple[str, frozenset[str] | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", None),
    403: ("permission_error", frozenset({"user_not_found", "model_not_allowed", "forbidden", "upstream_key_rejected"})),
    404: ("not_found_error", None),
    405: ("invalid_request_error", frozenset({"method_not_allowed"})),
    408: ("invalid_request_error", frozenset({"request_timeout"})),  # beyond the table: client deadlines
    413: ("invalid_request_error", frozenset({"body_too_large"})),
    431: ("invalid_request_error", frozenset({"headers_too_large"})),  # beyond the table: client deadlines
    429: ("rate_limit_error", frozenset({"rate_limit_exceeded", "concurrency_limit_exceeded"})),
    500: ("server_error", None),
    502: ("upstream_error", None),
    503: (
        "service_unavailable",
        # database_unavailable: the admin API while the usage database is away (reliability work).
        frozenset({"service_unavailable", "circuit_open", "overloaded", "limits_unavailable", "database_unavailable"}),
    ),
    504: ("upstream_timeout", None),
}


def every_error() -> list[type[errors.GatewayError]]:
    found, pending = [], [errors.GatewayError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending += kind.__subclasses__()
    return found


@pytest.mark.parametrize("kind", every_error(), ids=lambda kind: kind.__name__)
def test_every_error_is_one_of_spec_8(kind: type[errors.GatewayError]) -> None:
    if kind is errors.BudgetExceeded:  # the monthly limit: 429 with OpenAI's own quota type and code
        assert (kind.status_code, kind.type, kind.code) == (429, "insufficient_quota", "insufficient_quota")
        return
    status_type, codes = SPEC_8[kind.status_code]
    assert kind.type == status_type
    assert codes is None or kind.code in codes
    assert kind.message


def test_an_error_renders_in_openais_shape_with_its_headers() -> None:
    error = errors.RateLimited("Slow down.", retry_after=2.5, headers={"RateLimit": '"agent";r=0;t=3'})
    status, headers, body = errors.render_error(error, "req-1")
    assert status == 429
    assert dict(headers)[b"retry-after"] == b"3" and dict(headers)[b"ratelimit"] == b'"agent";r=0;t=3'
    assert orjson.loads(body) == {
        "error": {
            "message": "Slow down.",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "param": None,
            "request_id": "req-1",
        }
    }
    assert errors.sse_error_event(error, "req-1") == b"data: " + body + b"\n\n"
