"""Processes of the benchmark: the fake upstream, the reference and the gateway, each on a free port,
started in its own session and stopped by its id; their CPU and memory from /proc."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PYTHON = sys.executable
SECRET = "bench-agent-secret-0123456789abcdef"
USER = "bench-user"
USER_KEY = "sk-bench-user-key"
MODELS = "gpt-4o-mini,bench-model"
AGENT_PATH = f"/api/v1/agents/{USER}/messages/chat/completions"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Everything the gateway reads from its environment (SPEC §3): a developer's shell must not leak in.
GATEWAY_VARS = frozenset(
    {
        "AGENT_SECRET_KEY",
        "AGENT_SECRET_MASTER_KEY",
        "AGENT_TOKENS_ONLY",
        "LITELLM_BASE_URL",
        "LITELLM_MASTER_KEY",
        "LETTA_BASE_URL",
        "LETTA_API_KEY",
        "LETTA_OWNERSHIP",
        "PUBLIC_BASE_URL",
        "AMS_BASE_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_SERVICE_KEY",
        "SUPABASE_JWT_SECRET",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_PASSWORD",
        "ALLOWED_ORIGINS",
        "MAX_CONCURRENT_REQUESTS",
        "REQUEST_TIMEOUT",
        "LLM_TIMEOUT",
        "STREAM_IDLE_TIMEOUT",
        "RATE_LIMIT_GENERAL",
        "RATE_LIMIT_AGENT",
        "RATE_LIMIT_AGENT_TOKENS",
        "MAX_CONCURRENT_PER_USER",
        "DEFAULT_RESERVE_TOKENS",
        "LIMITS_FAIL_MODE",
        "STREAM_DRAIN_SECONDS",
        "STREAM_DRAIN_BYTES",
        "SHUTDOWN_GRACE_SECONDS",
        "MAX_BODY_BYTES",
        "MAX_UPLOAD_BYTES",
        "ADMIN_API_KEY",
        "LOG_LEVEL",
        "ENVIRONMENT",
        "HOST",
        "PORT",
        "WORKERS",
    }
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine outside idle and iowait, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


class CpuSource(Protocol):
    def cpu_seconds(self) -> float: ...


def own_seconds(sources: Sequence[CpuSource]) -> float:
    """CPU of everything the bench runs: its servers, the wrk runs it has reaped, and itself."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return mine + sum(source.cpu_seconds() for source in sources)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and its children (threads included)."""
    total = 0
    for pid in process_tree(root):
        fields = proc_stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass
class Watched:
    """A process the bench uses but did not start (Redis): only read, never signalled."""

    name: str
    pid: int

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)


def find_redis(port: int) -> Watched | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if comm == "redis-server" and f":{port}".encode() in cmdline:
            return Watched("redis-server", int(entry))
    return None


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float:
        kib = 0
        for pid in process_tree(self.proc.pid):
            fields = proc_stat(pid)
            if fields is not None:
                kib += int(fields[21]) * PAGE_KB
        return kib / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None


class Processes:
    """Starts servers in their own session and stops exactly those, by id."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def start(self, name: str, cmd: Sequence[str], port: int, env: dict[str, str], cwd: Path) -> Server:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(name, port, proc, log_path)
        self.servers.append(server)
        return server

    def wait_ready(self, server: Server, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited at start-up:\n{tail(server.log_path)}")
            try:
                with urllib.request.urlopen(server.base + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        where = f"{server.base}{path}"
        raise RuntimeError(f"{server.name} not ready on {where} after {timeout:.0f} s:\n{tail(server.log_path)}")

    def stop_all(self) -> None:
        for server in self.servers:
            if server.alive():
                os.killpg(server.proc.pid, signal.SIGTERM)
        for server in self.servers:
            try:
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(timeout=5)
        self.servers.clear()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_json(method: str, url: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def gateway_env(base: dict[str, str], upstream: Server, db: Path, port: int, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in GATEWAY_VARS}
    env.update(
        AGENT_SECRET_KEY=SECRET,
        LITELLM_BASE_URL=upstream.base,
        DATABASE_URL=f"sqlite:///{db}",
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="WARNING",
        # The in-process limiter runs on every request, with a limit the bench never reaches.
        RATE_LIMIT_AGENT="1000000000/minute",
        # One bench user makes every call: its in-flight cap counts them all but never refuses.
        MAX_CONCURRENT_PER_USER="1000000",
        SHUTDOWN_GRACE_SECONDS="3",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def start_gateway(
    procs: Processes, name: str, upstream: Server, redis_url: str | None, budget: bool, checkout: Path | None = None
) -> Server:
    """`agent-gateway serve` of this checkout, or of another `checkout` (with its own .venv)."""
    binary = (checkout / ".venv" / "bin" if checkout else Path(PYTHON).parent) / "agent-gateway"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: install the gateway, or run with --compare reference")
    home = procs.workdir / name
    home.mkdir()
    port = free_port()
    env = gateway_env(dict(os.environ), upstream, home / "gw.db", port, redis_url)
    add = [str(binary), "users", "add", USER, "--litellm-key", USER_KEY, "--allowed-models", MODELS]
    if budget:
        env["RATE_LIMIT_AGENT_TOKENS"] = "1000000000000/minute"
        add += ["--monthly-limit", "1000000000000"]
    # cwd is a fresh directory so that no .env of the developer's is read.
    done = subprocess.run(add, env=env, cwd=home, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`agent-gateway users add` failed ({done.returncode}): {done.stderr.strip()}")
    server = procs.start(name, [str(binary), "serve"], port, env, home)
    procs.wait_ready(server, "/ping")
    return server


def start_reference(procs: Processes, name: str, upstream: Server) -> Server:
    port = free_port()
    cmd = [PYTHON, str(BENCH_DIR / "reference_proxy.py"), "--port", str(port), "--upstream", upstream.base]
    server = procs.start(name, cmd + ["--api-key", USER_KEY], port, dict(os.environ), ROOT)
    procs.wait_ready(server, "/ping")
    return server
