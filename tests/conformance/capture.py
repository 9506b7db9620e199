"""Capture the requests a real Letta server sends to an agent's OpenAI-compatible endpoint.

    .venv/bin/python -m tests.conformance.capture 0.16.8

starts that Letta, points one agent per model at the project's fake LiteLLM (which records
what arrives), runs a turn and a streamed turn each, and writes the bodies Letta sent, as
sent, to `tests/fixtures/letta/<version>/`. The fast tests replay them through the gateway.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import httpx

from tests.conformance.servers import LettaServer
from tests.conformance.venvs import LETTA_0_11, LETTA_0_16
from tests.fakes.litellm import FakeLiteLLM

FIXTURES = Path(__file__).parent.parent / "fixtures" / "letta"
# The chat model runs a tool loop; a reasoning model's name makes Letta 0.16 call /responses.
MODELS = {"0.11.7": {"chat": "letta-loop"}, "0.16.8": {"chat": "letta-loop", "responses": "gpt-5-mini"}}


def capture(version: str) -> list[Path]:
    (LETTA_0_11 if version == "0.11.7" else LETTA_0_16).ensure()
    fake = FakeLiteLLM().start()
    letta = LettaServer(f"letta-{version}", Path(tempfile.mkdtemp()), version=version, agent_secret="sk-agent-secret")
    letta.start()
    written = []
    try:
        letta.wait_ready()
        for name, model in MODELS[version].items():
            for stream in (False, True):
                before = len(fake.requests)
                _turn(letta, fake.url, model, stream)
                body = next(seen.body for seen in fake.requests[before:] if seen.path != "/embeddings")
                path = FIXTURES / version / f"{name}{'_stream' if stream else ''}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
                written.append(path)
    finally:
        letta.stop()
        fake.stop()
    return written


def _turn(letta: LettaServer, endpoint: str, model: str, stream: bool) -> None:
    base = f"{letta.url}/v1"
    agent = httpx.post(
        f"{base}/agents/",
        headers=letta.headers,
        timeout=60,
        json={
            "name": f"capture-{model}",
            "llm_config": {
                "model": model,
                "model_endpoint_type": "openai",
                "model_endpoint": endpoint,
                "context_window": 128000,
            },
            "embedding_config": {
                "embedding_model": "text-embedding-3-small",
                "embedding_endpoint_type": "openai",
                "embedding_endpoint": endpoint,
                "embedding_dim": 1536,
            },
        },
    ).json()
    body = {"messages": [{"role": "user", "content": "look it up"}], "stream_tokens": stream}
    # Only what Letta sends matters here. (Straight from the fake, Letta 0.11 then fails on the
    # answer's null usage details, which the gateway turns into zeros.)
    httpx.post(f"{base}/agents/{agent['id']}/messages/stream", headers=letta.headers, json=body, timeout=120)


if __name__ == "__main__":
    for written in capture(sys.argv[1] if len(sys.argv) > 1 else "0.16.8"):
        print(written)
