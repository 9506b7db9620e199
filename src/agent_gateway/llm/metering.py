"""What a call cost: usage read from JSON answers and SSE streams, or estimated (SPEC §4, §5.9).

The stream side works on whole SSE events as they arrive: it forwards every complete event
at once and keeps only an unfinished tail, so it never holds back what the client could use.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from agent_gateway.domain import Usage

# The generated text and tool arguments inside chunks, for the estimate when no usage comes.
_STREAMED_TEXT = re.compile(rb'"(?:content|arguments|delta|text)":"((?:[^"\\]|\\.)*)"')
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")
_DETAILS = ("prompt_tokens_details", "completion_tokens_details", "input_tokens_details", "output_tokens_details")


def read_usage(usage: Any) -> Usage | None:
    """Usage from a chat/embeddings (`prompt_tokens`…) or responses (`input_tokens`…) object."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _int(usage.get("total_tokens")) or prompt + completion
    if total == 0:
        return None  # `{}` or all zeros is no report: the call is estimated, not free
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(prompt, completion, cached, total)


def scrub_usage(usage: Any) -> bool:
    """Make `null` token counts inside the details `0`; True if anything changed.

    Letta 0.11 refuses `cached_tokens: null`, and removing the key is not enough: the openai
    SDK inside Letta reads a missing count as null again. A whole details object that is null
    is dropped (the SDK then leaves it out, which Letta accepts).
    """
    changed = False
    if not isinstance(usage, dict):
        return False
    for name in _DETAILS:
        details = usage.get(name)
        if isinstance(details, dict) and None in details.values():
            usage[name] = {key: 0 if value is None else value for key, value in details.items()}
            changed = True
        elif name in usage and details is None:
            del usage[name]
            changed = True
    return changed


def streamed_text_bytes(data: bytes) -> int:
    """Bytes of generated text and tool arguments in `data` (an answer or stream events)."""
    return sum(map(len, _STREAMED_TEXT.findall(data)))


def estimate(prompt_estimate: int, streamed_bytes: int = 0) -> Usage:
    completion = streamed_bytes // 4
    return Usage(prompt_estimate, completion, 0, prompt_estimate + completion, estimated=True)


# Beyond any real call, and far within what the ledger's 64-bit columns and Redis' counters add up:
# a larger count is garbage, which wedged the ledger (SQLite and asyncpg refuse 2**63).
_MOST_TOKENS = 2**40


def _int(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value <= _MOST_TOKENS else 0


class StreamMeter:
    """Splits an SSE byte stream into whole events, reads usage from them and counts the
    streamed text; drops the usage-only chunk the gateway forced when the client did not ask."""

    def __init__(self, drop_forced_usage: bool) -> None:
        self.drop_forced_usage = drop_forced_usage
        self.usage: Usage | None = None
        self.streamed_bytes = 0
        self.done = False
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward now: every event completed by `chunk`."""
        data = self._tail + chunk if self._tail else chunk
        end = _last_event_end(data)
        if end == 0:
            self._tail = data
            return b""
        ready, self._tail = data[:end], data[end:]
        self.streamed_bytes += streamed_text_bytes(ready)
        if b"[DONE]" in ready:
            self.done = True
        if b'"usage"' in ready:
            return self._rewrite(ready)
        return ready

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail

    @property
    def finished(self) -> bool:
        """The usage is known (or the stream said it is done): a drain may stop."""
        return self.usage is not None or self.done

    def _rewrite(self, ready: bytes) -> bytes:
        # Only the events that mention usage are cut out and parsed; the rest pass as they came.
        parts: list[bytes] = []
        done = 0
        found = ready.find(b'"usage"')
        while found != -1:
            begin, end = _event_around(ready, found)
            parts += (ready[done:begin], self._inspect(ready[begin:end]))
            done = end
            found = ready.find(b'"usage"', end)
        parts.append(ready[done:])
        return b"".join(parts)

    def _inspect(self, event: bytes) -> bytes:
        data = _event_data(event)
        if data is None or data == b"[DONE]":
            return event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        if chunk.get("type") in _RESPONSE_ENDS and isinstance(chunk.get("response"), dict):
            usage = chunk["response"].get("usage")
            self.usage = read_usage(usage) or self.usage
            self.done = True
            return _with_data(event, chunk) if scrub_usage(usage) else event
        usage = chunk.get("usage")
        if usage is None:
            return event
        self.usage = read_usage(usage) or self.usage
        if self.drop_forced_usage and _usage_only(chunk):
            return b""
        if self.drop_forced_usage:
            del chunk["usage"]
        elif not scrub_usage(usage):
            return event
        return _with_data(event, chunk)


def _usage_only(chunk: dict[str, Any]) -> bool:
    """A chunk that carries nothing but usage: no choices, or choices with empty deltas
    (LiteLLM sends `[{"index": 0, "delta": {}}]`)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    return all(isinstance(c, dict) and not c.get("delta") and not c.get("finish_reason") for c in choices)


def _last_event_end(data: bytes) -> int:
    end = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    if crlf >= 0 and crlf + 4 > end + 2:
        return crlf + 4
    return end + 2 if end >= 0 else 0


def _event_around(data: bytes, at: int) -> tuple[int, int]:
    """The bounds of the SSE event holding byte `at` (events end with a blank line, LF or CRLF)."""
    lf, crlf = data.rfind(b"\n\n", 0, at), data.rfind(b"\r\n\r\n", 0, at)
    begin = max(lf + 2 if lf != -1 else 0, crlf + 4 if crlf != -1 else 0)
    ends = [end + size for end, size in ((data.find(b"\n\n", at), 2), (data.find(b"\r\n\r\n", at), 4)) if end != -1]
    return begin, min(ends) if ends else len(data)


def _with_data(event: bytes, chunk: dict[str, Any]) -> bytes:
    """`event` with its data replaced by `chunk`; its `event:` and `id:` lines kept."""
    kept = [line for line in event.splitlines() if line and not line.startswith(b"data:")]
    return b"\n".join([*kept, b"data: " + orjson.dumps(chunk)]) + b"\n\n"


def _event_data(event: bytes) -> bytes | None:
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class BillingOutcome:
    """How a call ended, as far as billing is concerned, and so what its ledger row holds."""

    __slots__ = ("answer_bytes", "has_answer", "meter", "started", "status", "usage")

    def __init__(self) -> None:
        self.status = 0
        self.started = False  # the client's answer has begun: errors are SSE events from here on
        self.usage: Usage | None = None
        self.meter: StreamMeter | None = None
        self.has_answer = False  # the upstream sent response headers: it may have billed
        self.answer_bytes = 0

    def answered(self, status: int) -> None:
        self.status = status
        self.has_answer = True

    def fail(self, status: int) -> None:
        if not self.has_answer:  # the ledger keeps the upstream's own status when there was one
            self.status = status

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
