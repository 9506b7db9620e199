"""Venvs of their own for the real servers the conformance suite runs (Letta, LiteLLM).

Their dependency sets are large and pinned differently from ours, so each lives in its own
venv, built once with `uv` from a constraints file in this folder and cached under
`$AGENT_GATEWAY_CACHE` (default `~/.cache/agent-gateway`). The cache key is the pins
themselves: change a constraints file and the next run builds a new venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Root's home is closed to other users, and the PostgreSQL that Letta 0.16 needs must run as one
# (it refuses root) from binaries inside a venv: as root, the cache lives where it can reach them.
_DEFAULT_CACHE = Path("/var/cache/agent-gateway") if os.geteuid() == 0 else Path.home() / ".cache" / "agent-gateway"
CACHE = Path(os.environ.get("AGENT_GATEWAY_CACHE") or _DEFAULT_CACHE)
CONSTRAINTS = Path(__file__).parent / "constraints"


@dataclass(frozen=True)
class ServerVenv:
    name: str
    requirements: tuple[str, ...]
    constraints: Path

    @property
    def path(self) -> Path:
        digest = hashlib.sha256()
        digest.update(" ".join(self.requirements).encode())
        digest.update(self.constraints.read_bytes())
        digest.update(sys.version.encode())
        return CACHE / "venvs" / f"{self.name}-{digest.hexdigest()[:12]}"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def ensure(self) -> ServerVenv:
        """Build the venv unless a complete one is cached; safe to call from several processes."""
        ready = self.path / ".ready"
        if ready.exists():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / f"{self.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not ready.exists():
                self._build()
                ready.touch()
        return self

    def _build(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # a half-built venv from an interrupted run
        uv = _uv()
        try:
            subprocess.run([uv, "venv", "--quiet", "--python", _base_python(), str(self.path)], check=True)
            install = [uv, "pip", "install", "--quiet", "--python", str(self.bin("python"))]
            subprocess.run([*install, "-c", str(self.constraints), *self.requirements], check=True)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"  # the dev venv's own uv (requirements-dev.lock)
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not installed; `make test` installs it with the dev requirements")
    return found


def _base_python() -> str:
    # The interpreter our own venv was made from: server venvs must not nest inside ours.
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


LETTA_0_11 = ServerVenv("letta-0.11.7", ("letta[server,sqlite]==0.11.7",), CONSTRAINTS / "letta-0.11.7.txt")
LETTA_0_16 = ServerVenv(
    "letta-0.16.8", ("letta[server,sqlite,postgres]==0.16.8", "pgserver==0.1.4"), CONSTRAINTS / "letta-0.16.8.txt"
)
LITELLM = ServerVenv("litellm-1.108.7", ("litellm[proxy]==1.108.7",), CONSTRAINTS / "litellm.txt")
