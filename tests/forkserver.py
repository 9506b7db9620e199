"""Gateway processes forked from one that imported the gateway already.

Each gateway stays a process of its own (its own pid, signals, sockets, environment, working
directory and log file) and runs the real `agent-gateway serve`; forking skips the interpreter
start, the imports and the startup `gc.collect` over them: about 0.6 s of the 0.9 s a
`python -m agent_gateway serve` takes to answer, and the tests start some 80 gateways.

Run as a script, this file is the server: one JSON request a line on stdin, one answer a line on
stdout. Imported, `ForkServer` and `ForkedProcess` are the tests' side."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- the server side (this file run as a script) ----------------------------------------------


def _requests() -> Iterator[dict[str, Any]]:
    for line in sys.stdin:
        yield json.loads(line)


def _answer(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()  # nothing buffered may be copied into a child


def _become_gateway(request: dict[str, Any]) -> None:
    """In the child: what `Popen(..., cwd=, env=, stdout=log, stderr=STDOUT)` would have set up."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["agent-gateway", "serve"]


def _serve_forks() -> dict[str, Any] | None:
    """Answers requests until stdin closes (then None), or returns a spawn request in the child."""
    running: set[int] = set()
    exited: dict[int, int] = {}
    for request in _requests():
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                return request
            running.add(pid)
            _answer(pid=pid)
        elif request["op"] == "poll":
            pid = request["pid"]
            if pid in running:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    running.discard(pid)
                    exited[pid] = os.waitstatus_to_exitcode(status)  # -N when killed by signal N
            _answer(code=exited.get(pid))
    for pid in running:  # the tests are gone: so are their gateways
        os.kill(pid, signal.SIGKILL)
    return None


def main() -> int:
    # Everything `agent-gateway serve` imports, before the first fork.
    import uvicorn.lifespan.on
    import uvicorn.loops.uvloop
    import uvicorn.protocols.http.httptools_impl  # noqa: F401

    import agent_gateway.app
    import agent_gateway.server  # noqa: F401
    from agent_gateway.cli import main as cli_main

    # What is imported lives as long as every child: keep their collector off it.
    gc.collect()
    gc.freeze()
    request = _serve_forks()
    if request is None:
        return 0
    _become_gateway(request)
    cli_main.main()  # exits with the gateway's status, through atexit (coverage saves there)


# ---- the tests' side --------------------------------------------------------------------------


@dataclass
class ForkServer:
    """One per test process, started on first use."""

    _process: subprocess.Popen[str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # tests stop gateways from threads too

    def start(self) -> None:
        """Without waiting for its imports: they go on while the caller does other work."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )

    def _ask(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            self._start()
            assert self._process is not None
            assert self._process.stdin is not None and self._process.stdout is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            answer: dict[str, Any] = json.loads(self._process.stdout.readline())
            return answer

    def spawn(self, env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        return ForkedProcess(self, self._ask(op="spawn", env=env, cwd=str(cwd), log=str(log))["pid"])

    def exit_code(self, pid: int) -> int | None:
        code: int | None = self._ask(op="poll", pid=pid)["code"]
        return code

    def close(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(30)
            self._process = None


@dataclass
class ForkedProcess:
    """The part of `subprocess.Popen` the tests use, for a forked gateway."""

    server: ForkServer
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"gateway {self.pid}", timeout or 0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


if __name__ == "__main__":
    sys.exit(main())
