"""The real servers of the conformance suite, each a process of its own on a loopback port.

- `LiteLLMProxy`: LiteLLM's own proxy, DB-less, its models answering from `mock_response`.
- `LettaServer`: Letta 0.11.7 on SQLite, or 0.16.8 on a throwaway PostgreSQL with pgvector
  (the `pgserver` wheel's binaries), with a fresh home and working directory and a password.

Each is started once per run; `start()` returns at once so several can warm up together,
and `wait_ready()` waits for its health route.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conformance.venvs import LETTA_0_11, LETTA_0_16, LITELLM, ServerVenv
from tests.conftest import free_port

LETTA_PASSWORD = "letta-conformance-password-5d2c"


@dataclass
class ServerProcess:
    """A child process in a session of its own, stopped with everything it started."""

    name: str
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd or self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_for(self, path: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer {path} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def _clean_env(**extra: str) -> dict[str, str]:
    """A child's environment: ours without our venv or test settings, plus `extra`."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if "/.venv/" not in p)
    return {**env, **extra}


class LiteLLMProxy(ServerProcess):
    CONFIG = Path(__file__).parent / "litellm.yaml"

    def start(self, venv: ServerVenv = LITELLM) -> LiteLLMProxy:
        command = [str(venv.bin("litellm")), "--config", str(self.CONFIG), "--host", "127.0.0.1"]
        # The bundled price map: no download attempt at start, no outbound connection at all.
        env = _clean_env(HOME=str(self.workdir), LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCKER="1")
        self.spawn([*command, "--port", str(self.port)], env)
        return self

    def wait_ready(self) -> None:
        self.wait_for("/health/liveliness", timeout=90)


@dataclass
class LettaServer(ServerProcess):
    version: str = "0.11.7"
    agent_secret: str = ""  # what Letta sends as `Authorization: Bearer` to every OpenAI-compatible endpoint
    openai_base_url: str = ""  # where Letta sends calls that name a handle rather than an endpoint
    postgres: PgvectorServer | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {LETTA_PASSWORD}"}

    @property
    def venv(self) -> ServerVenv:
        return LETTA_0_11 if self.version == "0.11.7" else LETTA_0_16

    def start(self) -> LettaServer:
        home, cwd = self.workdir / "home", self.workdir / "cwd"
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        env = _clean_env(
            HOME=str(home),
            LETTA_SERVER_PASSWORD=LETTA_PASSWORD,
            LETTA_SERVER_SECURE="true",
            OPENAI_API_KEY=self.agent_secret,
        )
        if self.openai_base_url:
            env["OPENAI_BASE_URL"] = self.openai_base_url
        # Offline, tiktoken cannot download its encodings; the venv ships one (in llama-index).
        for cache in self.venv.path.glob("lib/python3*/site-packages/llama_index/core/_static/tiktoken_cache"):
            env["TIKTOKEN_CACHE_DIR"] = str(cache)
        if self.version != "0.11.7":
            self.postgres = PgvectorServer(f"letta-{self.version}-postgres", self.workdir / "postgres")
            env.update(
                LETTA_PG_URI=self.postgres.start(self.venv).uri,
                # Without pooling about half of sync messages stall for 60 s on this Letta.
                LETTA_DISABLE_SQLALCHEMY_POOLING="false",
            )
        self.spawn([str(self.venv.bin("letta")), "server", "--host", "127.0.0.1", "--port", str(self.port)], env, cwd)
        return self

    def wait_ready(self) -> None:
        self.wait_for("/v1/health/", timeout=120, headers=self.headers)

    def stop(self) -> None:
        super().stop()
        if self.postgres is not None:
            self.postgres.stop()


class PgvectorServer(ServerProcess):
    """PostgreSQL 16 with pgvector from the `pgserver` wheel in Letta's venv, in a data directory
    of its own, with Letta's schema made from its ORM (the wheel ships no migrations)."""

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/letta?sslmode=disable"

    def start(self, venv: ServerVenv) -> PgvectorServer:
        pginstall = next(venv.path.glob("lib/python3*/site-packages/pgserver/pginstall"))
        # PostgreSQL refuses to run as root: then it runs as the system's `postgres` user.
        user = "postgres" if os.geteuid() == 0 else None
        data = Path(tempfile.mkdtemp(prefix="agw-letta-pg-"))
        if user is not None:
            shutil.chown(data, user)
        initdb = [str(pginstall / "bin/initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "utf8"]
        subprocess.run(initdb, check=True, capture_output=True, user=user)
        self.data = data
        command = [
            str(pginstall / "bin/postgres"),
            *("-D", str(data / "db"), "-p", str(self.port), "-k", str(data)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"),
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, user=user
            )
        self._wait_accepting(pginstall)
        subprocess.run(
            [str(pginstall / "bin/createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "letta"],
            check=True,
            capture_output=True,
        )
        # Letta picks its column types (pgvector's or not) from LETTA_PG_URI as its ORM loads.
        schema = subprocess.run(
            [str(venv.bin("python")), "-c", _LETTA_SCHEMA, self.uri],
            capture_output=True,
            text=True,
            env=_clean_env(HOME=str(self.workdir), LETTA_PG_URI=self.uri),
        )
        if schema.returncode != 0:
            raise RuntimeError(f"Letta's schema could not be made:\n{schema.stderr[-3000:]}")
        return self

    def _wait_accepting(self, pginstall: Path) -> None:
        ready = [str(pginstall / "bin/pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"]
        deadline = time.monotonic() + 30
        while subprocess.run(ready).returncode != 0:
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL for Letta did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(getattr(self, "data", ""), ignore_errors=True)


# Run in Letta's own venv: pgvector, Letta's tables from its ORM, and the one default its
# migrations would have added (message sequence ids).
_LETTA_SCHEMA = """
import sys
from sqlalchemy import create_engine, text
from letta.orm import Base
engine = create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg2://"))
with engine.begin() as conn:
    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
Base.metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(text("CREATE SEQUENCE IF NOT EXISTS message_sequence_id_seq OWNED BY messages.sequence_id"))
    conn.execute(text("ALTER TABLE messages ALTER COLUMN sequence_id SET DEFAULT nextval('message_sequence_id_seq')"))
"""
