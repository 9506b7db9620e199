"""The benchmark's rows (SPEC §9) and the request bodies they send."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import BENCH_DIR

LETTA_BODY = BENCH_DIR / "letta_chat_body.json"
LETTA_SIZE = 30 * 1024


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    concurrency: int
    body: str  # "small", "letta" or "stream"
    chunks: int = 20
    delay_ms: float = 0.0

    @property
    def stream(self) -> bool:
        return self.body == "stream"

    @property
    def stream_seconds(self) -> float:
        """How long one stream lasts at the upstream's pace (0 for JSON answers)."""
        return (self.chunks - 1) * self.delay_ms / 1000 if self.stream else 0.0


SCENARIOS = (
    Scenario("small-c1", "JSON small, c=1", 1, "small"),
    Scenario("small-c64", "JSON small, c=64", 64, "small"),
    Scenario("letta-c64", "JSON Letta 30 KB, c=64", 64, "letta"),
    Scenario("stream-c64", "SSE 20 chunks, c=64", 64, "stream", chunks=20),
    Scenario("slow-c256", "SSE 20 × 50 ms, c=256", 256, "stream", chunks=20, delay_ms=50),
)
REDIS_SCENARIOS = ("small-c1", "small-c64")


def small_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        "max_completion_tokens": 64,
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def letta_body() -> dict[str, Any]:
    """The captured Letta request, its core memory grown until the body is ~30 KB (long prompt, tools)."""
    body: dict[str, Any] = json.loads(LETTA_BODY.read_text())
    body["model"] = "bench-model"
    system = body["messages"][0]
    notes: list[str] = []
    i = 0
    while len(json.dumps(body, separators=(",", ":"))) + sum(map(len, notes)) < LETTA_SIZE:
        notes.append(
            f"- Note {i:03d}: the user mentioned project detail number {i}; prefers concise answers, "
            "works in UTC and likes runnable code examples.\n"
        )
        i += 1
    memory = "".join(notes)
    if "Name: probe" in system["content"]:
        system["content"] = system["content"].replace("Name: probe", "Name: probe\n" + memory.rstrip("\n"), 1)
    else:
        system["content"] += "\n" + memory
    return body


def write_bodies(directory: Path) -> dict[str, Path]:
    bodies = {"small": small_body(stream=False), "letta": letta_body(), "stream": small_body(stream=True)}
    paths = {}
    for name, body in bodies.items():
        path = directory / f"body_{name}.json"
        path.write_text(json.dumps(body, separators=(",", ":")))
        paths[name] = path
    return paths
