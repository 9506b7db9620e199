"""One command, one table: the gateway beside a bare reference proxy, same fake upstream (SPEC §9).

Starts a fake LiteLLM (`bench/fake_upstream.py`), the bare reference (`bench/reference_proxy.py`)
and the gateway as users run it (`agent-gateway serve`, SQLite ledger, in-process limits), each on
a free 127.0.0.1 port, then runs `wrk` against each server for every scenario, interleaved, and
prints one Markdown table. Every process it starts is stopped by its id when it ends.

    .venv/bin/python bench/run.py                      # gateway vs reference
    .venv/bin/python bench/run.py --compare reference  # reference vs itself (sanity: ratios ~1.0)
    .venv/bin/python bench/run.py --redis              # plus the gateway with limits on Redis
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script, `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Measurement, measure, measure_upstream_alone
from bench.processes import (
    BENCH_DIR,
    PYTHON,
    ROOT,
    USER_KEY,
    CpuSource,
    Processes,
    Server,
    Watched,
    find_redis,
    free_port,
    log,
    start_gateway,
    start_reference,
)
from bench.scenarios import REDIS_SCENARIOS, SCENARIOS, Scenario, write_bodies


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render_table(scenarios: Sequence[Scenario], results: list[Measurement], reference: str) -> str:
    header = [
        "scenario", "server", "req/s", "p50 ms", "p99 ms", "TTFC p50 / p99 ms", "CPU µs/req", "CPU %",
        "RSS MiB", "upstream µs/req", "others CPU %", "req/s ×ref", "CPU/req ×ref", "valid",
    ]  # fmt: skip
    rows = [header]
    for scenario in scenarios:
        mine = [m for m in results if m.scenario == scenario.key]
        ref = next((m for m in mine if m.server == reference), None)
        for m in mine:
            ttfc = "–" if m.ttfc_p50_ms is None else f"{m.ttfc_p50_ms:.1f} / {fmt(m.ttfc_p99_ms)}"
            ratio_rps = ratio_cpu = "–"
            if ref is not None and m is not ref:
                if m.valid and ref.valid and ref.rps and ref.cpu_us_per_req:
                    ratio_rps = f"{m.rps / ref.rps:.2f}×"
                    ratio_cpu = f"{m.cpu_us_per_req / ref.cpu_us_per_req:.2f}×"
                else:
                    ratio_rps = ratio_cpu = "n/a"
            rows.append(
                [
                    scenario.label, m.server, fmt(m.rps, 0), fmt(m.p50_ms, 2), fmt(m.p99_ms, 2), ttfc,
                    fmt(m.cpu_us_per_req, 0), fmt(m.cpu_percent, 0), fmt(m.rss_mib, 0),
                    fmt(m.upstream_us_per_req, 0), fmt(m.foreign_percent, 0), ratio_rps, ratio_cpu,
                    "yes" if m.valid else "NO: " + "; ".join(m.problems),
                ]
            )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = set(range(2, len(header) - 1))

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":" if i in numeric else "-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def machine_summary() -> str:
    model = "unknown CPU"
    for text_line in Path("/proc/cpuinfo").read_text().splitlines():
        if text_line.startswith("model name"):
            model = text_line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("Copyright")[0]
    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
        f"{wrk.strip()}"
    )


def git_revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "no commit"


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the gateway beside a bare reference proxy (SPEC §9).")
    parser.add_argument(
        "--compare", choices=("gateway", "reference"), default="gateway",
        help="what runs beside the reference: the gateway, or a second reference (sanity check, ratios ~1.0)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    parser.add_argument("--ttfc-samples", type=int, default=50, help="streams sampled for time to first chunk")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario keys: " + ",".join(s.key for s in SCENARIOS)
    )
    parser.add_argument(
        "--redis", action="store_true",
        help="also run a gateway with limits on Redis (REDIS_URL, db 15) for the small rows: admission overhead",
    )  # fmt: skip
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--budget", action="store_true", help="give the bench user a token limit and monthly limit")
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout (with its .venv) whose gateway runs beside, as gateway@<its name>; repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, wrk output, databases)")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[Scenario]:
    if not args.only:
        return list(SCENARIOS)
    keys = {k.strip() for k in args.only.split(",") if k.strip()}
    unknown = keys - {s.key for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return [s for s in SCENARIOS if s.key in keys]


def redis_address(url: str) -> tuple[str, int]:
    host_port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    return host, int(port or 6379)


def redis_answers(url: str) -> bool:
    try:
        with socket.create_connection(redis_address(url), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def run(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """The report, and whether every row is valid."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found on PATH (Debian: apt-get install wrk)")
    scenarios = selected(args)
    bodies = write_bodies(workdir)
    procs = Processes(workdir)
    started = time.monotonic()
    try:
        upstream_port = free_port()
        upstream = procs.start(
            "upstream",
            [PYTHON, str(BENCH_DIR / "fake_upstream.py"), "--port", str(upstream_port), "--expect-key", USER_KEY],
            upstream_port, dict(os.environ), ROOT,
        )  # fmt: skip
        procs.wait_ready(upstream, "/health/liveliness")
        reference = start_reference(procs, "reference", upstream)
        if args.compare == "gateway":
            other = start_gateway(procs, "gateway", upstream, None, args.budget)
        else:
            other = start_reference(procs, "reference#2", upstream)
        baselines = [
            start_gateway(procs, f"gateway@{path.name}", upstream, None, args.budget, path) for path in args.baseline
        ]
        extra: Server | None = None
        redis: Watched | None = None
        if args.redis:
            if args.compare != "gateway":
                raise RuntimeError("--redis needs --compare gateway")
            if not redis_answers(args.redis_url):
                raise RuntimeError(f"Redis does not answer at {args.redis_url}")
            extra = start_gateway(procs, "gateway+redis", upstream, args.redis_url, args.budget)
            # A local Redis's CPU is part of the admission cost, not noise; it is read, never signalled.
            redis = find_redis(redis_address(args.redis_url)[1])
        log(f"servers up: upstream {upstream.base}, reference {reference.base}, {other.name} {other.base}")

        up_rps, up_cpu = measure_upstream_alone(upstream, bodies["small"], max(2.0, args.duration / 2))
        log(f"fake upstream alone: {up_rps:,.0f} req/s, {up_cpu:.0f} µs CPU/request")

        results: list[Measurement] = []
        for scenario in scenarios:
            targets = [reference, other, *baselines]
            if extra is not None and scenario.key in REDIS_SCENARIOS:
                targets.append(extra)
            for server in targets:
                log(f"{scenario.label}: {server.name}")
                everything: list[CpuSource] = [*procs.servers, *([redis] if redis else [])]
                helper = redis if server is extra else None
                m = measure(server, upstream, everything, scenario, bodies[scenario.body], args, workdir, helper)
                log(
                    f"  {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"{m.cpu_us_per_req:.0f} µs/req, {m.cpu_percent:.0f}% CPU" + ("" if m.valid else f"  {m.problems}")
                )
                results.append(m)
    finally:
        procs.stop_all()

    slow = next((s for s in scenarios if s.delay_ms > 0), None)
    notes = [
        f"Agent Gateway benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, revision {git_revision()}",
        f"Machine: {machine_summary()}; wrk, the fake upstream and the servers share these cores.",
        f"Each row: {args.duration:g} s of wrk after {args.warmup:g} s of warm-up; servers interleaved per scenario; "
        f"total {time.monotonic() - started:.0f} s.",
        "",
        render_table(scenarios, results, reference.name),
        "",
        f"Fake upstream alone (small JSON, c=64): {up_rps:,.0f} req/s at {up_cpu:.0f} µs CPU/request.",
        "TTFC: time to the first body bytes of a stream, sampled by an aiohttp client beside wrk's load "
        f"({args.ttfc_samples} streams per row). CPU %: of one core, for the server process; others CPU %: "
        "what processes outside the bench took from the same cores during the row.",
    ]
    if results:
        noisiest = max(results, key=lambda m: m.foreign_percent)
        mean = statistics.fmean(m.foreign_percent for m in results)
        notes.append(
            f"Other processes on the machine took {mean:.0f}% of a core on average during the measured runs "
            f"(at most {noisiest.foreign_percent:.0f}%, {noisiest.scenario} / {noisiest.server})"
            + (": NOT A QUIET MACHINE, the figures of those rows are noisy." if noisiest.foreign_percent > 10 else ".")
        )
    for m in results:
        if m.helper_us_per_req is not None:
            notes.append(
                f"{m.server}, {m.scenario}: Redis itself (redis-server) used {m.helper_us_per_req:.0f} µs CPU per request "
                "beside the gateway's own."
            )
    if args.redis and redis is None:
        notes.append("Redis is not a local redis-server process: its CPU is not counted.")
    if slow is not None:
        pace = slow.concurrency / slow.stream_seconds
        notes.append(
            f"Slow streams at full pace last {slow.stream_seconds * 1000:.0f} ms (p50 above that is added delay), "
            f"so {slow.concurrency} connections finish at most ~{pace:.0f} req/s (less the first stream's ramp-up)."
        )
    if args.json:
        payload = {
            "scenarios": [asdict(s) for s in scenarios],
            "results": [asdict(m) for m in results],
            "upstream_alone": {"rps": up_rps, "cpu_us_per_req": up_cpu},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return "\n".join(notes), all(m.valid for m in results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected(args)  # an unknown row stops here, before anything is created
    workdir = Path(tempfile.mkdtemp(prefix="agent-gateway-bench-"))

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    status = 1
    try:
        report, valid = run(args, workdir)
        print(report, flush=True)
        status = 0 if valid else 2
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
    finally:
        if args.keep or status:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
