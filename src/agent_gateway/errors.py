"""Every refusal the gateway makes, rendered in OpenAI's error shape (SPEC §8).

GatewayError
├── BadRequest (400)            InvalidPath, InvalidJSON, InvalidField, AlreadyExists > UserExists
├── InvalidSecret (401)
├── Forbidden (403)             UserNotFound, ModelNotAllowed, UpstreamKeyRejected
├── NotFound (404)              NoSuchUser
├── MethodNotAllowed (405)
├── RequestTimeout (408)
├── BodyTooLarge (413)
├── HeadersTooLarge (431)
├── RateLimited (429)           BudgetExceeded, TooManyInFlight
├── ServerError (500)
├── UpstreamError (502)         UpstreamInvalid, KeyProvisioningFailed
├── ServiceUnavailable (503)    Overloaded, CircuitOpen, LimitsUnavailable
└── UpstreamTimeout (504)

Handlers and policies raise one; the dispatcher turns it into an answer with `render_error`,
in one place, and after a stream's first byte the pump says it with `sse_error_event`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import orjson


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    message: ClassVar[str] = "Internal error."

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message or self.message)
        self.param = param
        self.headers: dict[str, str] = {}
        # The upstream could not even be reached: its breaker counts this for everybody.
        self.service_fault = False


class BadRequest(GatewayError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"
    message = "The request is malformed."


class InvalidPath(BadRequest):
    code = "invalid_path"
    message = "The user id in the path is malformed."


class InvalidJSON(BadRequest):
    code = "invalid_json"
    message = "The body must be a JSON object."


class AlreadyExists(BadRequest):
    # Letta's own 409 carries its SQL statement and ids; the user learns only that the name is taken.
    code = "already_exists"
    message = "An object with this name exists already; names are unique across the platform."


class InvalidField(BadRequest):
    """A field of the admin API (or an option of the CLI) breaks its rule; `rule` says which, in words
    both can show."""

    code = "invalid_value"

    def __init__(self, param: str, rule: str) -> None:
        super().__init__(f"`{param}` {rule}.", param=param)
        self.rule = rule


class UserExists(AlreadyExists):
    message = "A user with this id exists."


class InvalidSecret(GatewayError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"
    message = "Missing or invalid agent secret."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = 'Bearer realm="agent-gateway"'


class Forbidden(GatewayError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"
    message = "Not allowed."


class UserNotFound(Forbidden):
    code = "user_not_found"
    message = "No profile or LiteLLM key for this user."


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"
    message = "This model is not in the user's allowed models."


class UpstreamKeyRejected(Forbidden):
    # LiteLLM echoes key fragments in its 401 body, so the message is ours alone; and it is a
    # 403, not a 401, so an agent does not take it for a bad agent secret.
    code = "upstream_key_rejected"
    message = "The user's LiteLLM key was refused upstream."


class NotFound(GatewayError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"
    message = "No such route."


class NoSuchUser(NotFound):
    code = "no_such_user"
    message = "No user with this id."


class MethodNotAllowed(GatewayError):
    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    message = "Method not allowed on this route."


class RequestTimeout(GatewayError):
    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"
    message = "The request did not arrive in time."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers["Connection"] = "close"  # the rest of the body is not waited for


class BodyTooLarge(GatewayError):
    status_code = 413
    type = "invalid_request_error"
    code = "body_too_large"
    message = "The request body is too large."


class HeadersTooLarge(GatewayError):
    status_code = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    message = "The request's headers are too large."


class RateLimited(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    message = "Rate limit exceeded."

    def __init__(self, message: str | None = None, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        seconds = max(1, math.ceil(retry_after))
        self.headers.update(headers)
        self.headers["Retry-After"] = str(seconds)
        self.headers["retry-after-ms"] = str(max(1, int(retry_after * 1000)))


class BudgetExceeded(RateLimited):
    # 429 rather than 402: OpenAI answers an exhausted quota with 429 insufficient_quota, and
    # agent SDKs know that shape; x-should-retry stops them from retrying until next month.
    type = "insufficient_quota"
    code = "insufficient_quota"
    message = "Monthly token limit reached."

    def __init__(self, message: str | None = None, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_after, headers=headers)
        self.headers["x-should-retry"] = "false"


class TooManyInFlight(RateLimited):
    code = "concurrency_limit_exceeded"
    message = "Too many calls of this user in flight."


class ServerError(GatewayError):
    pass


class UpstreamError(GatewayError):
    status_code = 502
    type = "upstream_error"
    code = "upstream_error"
    message = "The upstream service could not be reached or broke the protocol."


class UpstreamInvalid(UpstreamError):
    code = "upstream_invalid"
    message = "The upstream service answered with something that is not the protocol's."


class KeyProvisioningFailed(UpstreamError):
    # LiteLLM's own message can carry key fragments, so ours says only which call failed and how.
    code = "key_provisioning_failed"
    message = "LiteLLM refused a key request."


class ServiceUnavailable(GatewayError):
    status_code = 503
    type = "service_unavailable"
    code = "service_unavailable"
    message = "Service unavailable."


class Overloaded(ServiceUnavailable):
    code = "overloaded"
    message = "Too many requests in flight; try again shortly."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "1"


class CircuitOpen(ServiceUnavailable):
    code = "circuit_open"
    message = "The upstream service is failing; requests are paused."


class LimitsUnavailable(ServiceUnavailable):
    code = "limits_unavailable"
    message = "Limits cannot be checked right now."


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    message = "The usage database cannot be reached right now."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "5"


class UpstreamTimeout(GatewayError):
    status_code = 504
    type = "upstream_timeout"
    code = "upstream_timeout"
    message = "The upstream service did not answer in time."


def error_body(error: GatewayError, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": str(error),
                "type": error.type,
                "code": error.code,
                "param": error.param,
                "request_id": request_id,
            }
        }
    )


def render_error(error: GatewayError, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and body for `error`, as every route answers it."""
    body = error_body(error, request_id)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    return error.status_code, headers, body


def sse_error_event(error: GatewayError, request_id: str) -> bytes:
    """After a stream's first byte, an error can only be a final SSE event (SPEC §8)."""
    return b"data: " + error_body(error, request_id) + b"\n\n"
