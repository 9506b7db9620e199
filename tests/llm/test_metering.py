"""Reading usage out of SSE streams as they arrive (the relay's StreamMeter)."""

from __future__ import annotations

import orjson
import pytest

from agent_gateway.domain import Usage
from agent_gateway.llm.metering import StreamMeter, read_usage


def chunk(content: str | None = None, usage: dict[str, object] | None = None, finish: str | None = None) -> bytes:
    choice: dict[str, object] = {"index": 0, "delta": {"content": content} if content else {}}
    if finish:
        choice["finish_reason"] = finish
    data: dict[str, object] = {"object": "chat.completion.chunk", "choices": [choice]}
    if usage is not None:
        data["usage"] = usage
    return b"data: " + orjson.dumps(data) + b"\n\n"


USAGE = {
    "prompt_tokens": 8,
    "completion_tokens": 3,
    "total_tokens": 11,
    "prompt_tokens_details": {"cached_tokens": None},
}
STREAM = chunk("Hel") + chunk("lo") + chunk(finish="stop") + chunk(usage=USAGE) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("split", [1, 7, 50, len(STREAM)])
def test_usage_is_read_whatever_the_read_sizes(split: int) -> None:
    meter = StreamMeter(drop_forced_usage=False)
    out = b"".join(meter.feed(STREAM[i : i + split]) for i in range(0, len(STREAM), split)) + meter.flush()
    assert meter.usage is not None and (meter.usage.prompt_tokens, meter.usage.total_tokens) == (8, 11)
    assert meter.done and meter.streamed_bytes == len("Hello")
    events = [event for event in out.split(b"\n\n") if event]
    assert len(events) == 5
    assert orjson.loads(events[3][6:])["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 0
    }  # Letta needs an integer
    assert events[:3] == [event for event in STREAM.split(b"\n\n") if event][:3]  # the rest untouched


def test_the_forced_usage_chunk_is_dropped_for_clients_that_did_not_ask() -> None:
    meter = StreamMeter(drop_forced_usage=True)
    out = meter.feed(STREAM) + meter.flush()
    assert meter.usage is not None and meter.usage.total_tokens == 11
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")


def test_crlf_events_are_understood() -> None:
    stream = STREAM.replace(b"\n\n", b"\r\n\r\n")
    meter = StreamMeter(drop_forced_usage=True)
    out = meter.feed(stream[:40]) + meter.feed(stream[40:]) + meter.flush()
    assert meter.usage is not None and meter.usage.total_tokens == 11
    assert b'"usage"' not in out and out.count(b"\r\n\r\n") == 4


def test_counts_no_call_could_reach_are_no_report() -> None:
    """An upstream reporting 2**63 tokens wedged the ledger (SQLite and asyncpg refuse the value)."""
    assert read_usage({"prompt_tokens": 2**63, "completion_tokens": 2**63, "total_tokens": 2**63}) is None
    assert read_usage({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 2**63}) == Usage(11, 7, 0, 18)


def test_empty_or_zero_usage_is_no_report() -> None:
    assert read_usage({}) is None
    assert read_usage({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}) is None
    embeddings = read_usage({"prompt_tokens": 10, "total_tokens": 0})  # LiteLLM's embeddings
    assert embeddings is not None and embeddings.total_tokens == 10


def test_null_counts_in_a_responses_stream_become_zeros_and_the_event_line_stays() -> None:
    usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7, "input_tokens_details": {"cached_tokens": None}}
    completed = {"type": "response.completed", "response": {"id": "resp_1", "usage": usage}}
    event = b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"
    meter = StreamMeter(drop_forced_usage=False)
    out = meter.feed(event) + meter.flush()
    assert out.startswith(b"event: response.completed\ndata: ")
    sent = orjson.loads(out.split(b"data: ", 1)[1])
    assert sent["response"]["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert meter.usage is not None and meter.usage.total_tokens == 7
