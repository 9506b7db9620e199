"""One row against one server: wrk for the load, an aiohttp client beside it for the time to first
chunk, CPU and memory of the server around the measured run, and every check that makes it valid."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.processes import (
    AGENT_PATH,
    BENCH_DIR,
    SECRET,
    CpuSource,
    Server,
    http_json,
    machine_busy_seconds,
    own_seconds,
)
from bench.scenarios import Scenario

WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"


@dataclass
class Measurement:
    scenario: str
    server: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    ttfc_p50_ms: float | None = None
    ttfc_p99_ms: float | None = None
    ttfc_samples: int = 0
    cpu_us_per_req: float = 0.0
    cpu_percent: float = 0.0
    rss_mib: float = 0.0
    upstream_us_per_req: float = 0.0
    foreign_percent: float = 0.0
    helper_us_per_req: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems and self.requests > 0


def wrk_command(scenario: Scenario, url: str, body: Path, seconds: float) -> list[str]:
    threads = min(2, scenario.concurrency)
    timeout = max(10, int(scenario.stream_seconds * 4) + 5)
    return [
        "wrk", f"-t{threads}", f"-c{scenario.concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout}s",
        "--latency", "-s", str(WRK_SCRIPT), "-H", f"Authorization: Bearer {SECRET}", url, "--", str(body),
    ]  # fmt: skip


def parse_wrk(output: str) -> dict[str, float]:
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            parsed: dict[str, float] = json.loads(line.removeprefix("BENCH_RESULT "))
            return parsed
    raise ValueError("no BENCH_RESULT line in wrk output")


def check_answer(scenario: Scenario, status: int, body: bytes) -> str | None:
    """What is wrong with one answer of the server, or None."""
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    if not scenario.stream:
        try:
            answer = json.loads(body)
            answer["usage"]["total_tokens"]
            answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"not a chat.completion: {body[:120]!r}"
        return None
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    try:
        chunks = [json.loads(e) for e in events if e != b"[DONE]"]
    except ValueError:
        return f"stream: an event is not JSON: {body[-160:]!r}"
    content = [c for c in chunks if c.get("choices")]
    usage = [c for c in chunks if c.get("usage")]
    if any("error" in c for c in chunks):
        return f"stream: error event: {body[-160:]!r}"
    if len(content) != scenario.chunks or not usage or not events or events[-1] != b"[DONE]":
        return f"stream: {len(content)} content chunks, {len(usage)} usage, last {events[-1:]!r}"
    return None


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes, float | None]:
    """Status, body and seconds to the first body bytes."""
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    start = time.perf_counter()
    first: float | None = None
    parts = []
    async with session.post(url, data=body, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter() - start
            parts.append(chunk)
        return resp.status, b"".join(parts), first


async def sample_ttfc(
    scenario: Scenario, url: str, body: bytes, seconds: float, samples: int
) -> tuple[list[float], list[str]]:
    """Streams opened at an even pace beside wrk's load; each is read to its end."""
    start, end = 1.0, max(1.5, seconds - scenario.stream_seconds - 1.0)
    gap = (end - start) / samples
    firsts: list[float] = []
    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=scenario.stream_seconds * 5 + 15)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def sample() -> None:
            try:
                status, answer, first = await one_request(session, url, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"sampler: {type(exc).__name__}")
                return
            problem = check_answer(scenario, status, answer)
            if problem:
                problems.append(f"sampler: {problem}")
            elif first is not None:
                firsts.append(first)

        await asyncio.sleep(start)
        tasks = []
        for _ in range(samples):
            tasks.append(asyncio.create_task(sample()))
            await asyncio.sleep(gap)
        await asyncio.gather(*tasks)
    return firsts, problems


async def run_load(
    scenario: Scenario, url: str, body_path: Path, body: bytes, seconds: float, samples: int
) -> tuple[str, list[float], list[str]]:
    proc = await asyncio.create_subprocess_exec(
        *wrk_command(scenario, url, body_path, seconds), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    sampler = None
    if scenario.stream and samples > 0:
        sampler = asyncio.create_task(sample_ttfc(scenario, url, body, seconds, samples))
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    firsts, problems = await sampler if sampler else ([], [])
    if proc.returncode != 0:
        problems.append(f"wrk exit {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
    return out.decode(errors="replace"), firsts, problems


def wait_settled(upstream: Server, timeout: float = 5.0) -> None:
    """Until no slow stream is in flight at the upstream (clients gone at the end of a wrk run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and http_json("GET", upstream.base + "/_bench/stats")["active"] > 0:
        time.sleep(0.1)
    time.sleep(0.3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def measure(
    server: Server,
    upstream: Server,
    everything: Sequence[CpuSource],
    scenario: Scenario,
    body_path: Path,
    args: argparse.Namespace,
    workdir: Path,
    helper: CpuSource | None = None,
) -> Measurement:
    """`helper`: a process the server leans on (Redis), whose CPU per request is reported too."""
    result = Measurement(scenario.key, server.name)
    http_json("POST", upstream.base + "/_bench/config", {"chunks": scenario.chunks, "delay_ms": scenario.delay_ms})
    url = server.base + AGENT_PATH
    body = body_path.read_bytes()

    async def preflight() -> str | None:
        async with aiohttp.ClientSession() as session:
            status, answer, _ = await one_request(session, url, body)
        return check_answer(scenario, status, answer)

    problem = asyncio.run(preflight())
    if problem:
        result.problems.append(f"preflight: {problem}")
    if args.warmup > 0:
        warmup = wrk_command(scenario, url, body_path, args.warmup)
        subprocess.run(warmup, capture_output=True, timeout=args.warmup + 60, check=False)
    wait_settled(upstream)

    stats0 = http_json("GET", upstream.base + "/_bench/stats")
    busy0, own0 = machine_busy_seconds(), own_seconds(everything)
    helper0 = helper.cpu_seconds() if helper else 0.0
    cpu0, up_cpu0, t0 = server.cpu_seconds(), upstream.cpu_seconds(), time.monotonic()
    output, firsts, problems = asyncio.run(run_load(scenario, url, body_path, body, args.duration, args.ttfc_samples))
    cpu1, up_cpu1, elapsed = server.cpu_seconds(), upstream.cpu_seconds(), time.monotonic() - t0
    busy1, own1 = machine_busy_seconds(), own_seconds(everything)
    helper1 = helper.cpu_seconds() if helper else 0.0
    # CPU that other processes on the machine took from the run: noise in every figure.
    result.foreign_percent = max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed * 100
    stats1 = http_json("GET", upstream.base + "/_bench/stats")
    result.rss_mib = server.rss_mib()
    (workdir / f"wrk-{scenario.key}-{server.name}.txt").write_text(output)
    result.problems += sorted(set(problems))
    if not server.alive():
        result.problems.append("server died")
    try:
        wrk = parse_wrk(output)
    except ValueError as exc:
        result.problems.append(str(exc))
        return result

    done = int(wrk["requests"]) + len(firsts)
    result.requests = int(wrk["requests"])
    result.seconds = wrk["duration_us"] / 1e6
    result.rps = wrk["requests"] / result.seconds
    result.p50_ms, result.p99_ms = wrk["p50_us"] / 1000, wrk["p99_us"] / 1000
    if firsts:
        result.ttfc_p50_ms = statistics.median(firsts) * 1000
        result.ttfc_p99_ms = percentile(firsts, 99) * 1000
        result.ttfc_samples = len(firsts)
    if done:
        result.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / done
        result.upstream_us_per_req = (up_cpu1 - up_cpu0) * 1e6 / done
        if helper is not None:
            result.helper_us_per_req = (helper1 - helper0) * 1e6 / done
    result.cpu_percent = (cpu1 - cpu0) / elapsed * 100
    for name in ("status", "connect", "read", "write", "timeout"):
        if wrk[name]:
            label = "non-2xx" if name == "status" else f"{name} errors"
            result.problems.append(f"{int(wrk[name])} {label}")
    served = stats1["requests"] - stats0["requests"]
    if served < done:
        result.problems.append(f"upstream saw {served} requests for {done} answers")
    if stats1["bad_auth"] > stats0["bad_auth"]:
        result.problems.append("upstream got a wrong key")
    return result


def measure_upstream_alone(upstream: Server, body_path: Path, seconds: float) -> tuple[float, float]:
    """req/s and CPU µs per request of the fake upstream alone (small JSON, c=64): the ceiling."""
    http_json("POST", upstream.base + "/_bench/config", {"chunks": 20, "delay_ms": 0})
    scenario = Scenario("upstream", "upstream alone", 64, "small")
    cpu0 = upstream.cpu_seconds()
    done = subprocess.run(
        wrk_command(scenario, upstream.base + "/chat/completions", body_path, seconds),
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    cpu1 = upstream.cpu_seconds()
    wrk = parse_wrk(done.stdout)
    rps = wrk["requests"] / (wrk["duration_us"] / 1e6)
    return rps, (cpu1 - cpu0) * 1e6 / max(1, wrk["requests"])
