"""Real parts: the gateway as a real `agent-gateway serve` process, a fake LiteLLM over real
HTTP, the `openai` SDK as the client, and the real Redis and PostgreSQL servers."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner, Result
from openai import AsyncOpenAI, OpenAI

from agent_gateway.cli import main as cli_main
from agent_gateway.domain import Profile
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.profiles import ProfileStore
from tests.fakes.litellm import FakeLiteLLM
from tests.forkserver import ForkedProcess, ForkServer

SECRET = "test-agent-secret-7f3a9c"
TOKEN_KEY = "test-agent-token-key-51c0e8"  # derives the per-user agent tokens: not the agent secret
SEAL_KEY = base64.urlsafe_b64encode(b"agent-gateway-test-sealing-key!!").decode()  # KEY_ENCRYPTION_KEY
SEALED = KeyCipher((SEAL_KEY.encode(),))  # how the test gateways store keys
USER_KEY_PREFIX = "sk-user-key-"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


FORKS = ForkServer()  # this test process's gateways are forked from it (see tests/forkserver.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: ForkedProcess | None = None
    stopping: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"gateway-{self.port}.log"

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    def start(self) -> GatewayProcess:
        env = {**os.environ, **self.env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.process = FORKS.spawn(env, self.workdir, self.log_path)
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=0.5) as client:  # one: making a client takes longer than a try
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
                try:
                    if client.get(f"{self.url}/ping").status_code == 200:
                        return self
                except httpx.HTTPError:
                    time.sleep(0.01)
        raise RuntimeError("gateway did not start in 30 s")

    def stop(self) -> None:
        """SIGTERM (once), without waiting for the drain."""
        assert self.process is not None
        if not self.stopping and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.stopping = True

    def terminate(self, timeout: float = 30) -> int:
        self.stop()
        assert self.process is not None
        return self.process.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text()

    def agent_base(self, user_id: str) -> str:
        return f"{self.url}/api/v1/agents/{user_id}/messages"

    def client(self, user_id: str, api_key: str = SECRET, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.agent_base(user_id), api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, user_id: str, api_key: str = SECRET, **kwargs: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.agent_base(user_id), api_key=api_key, max_retries=0, **kwargs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def add_profile(database_url: str, user_id: str, **fields: Any) -> Profile:
    profile = Profile(user_id, fields.pop("litellm_key", USER_KEY_PREFIX + user_id), **fields)
    database = Database(database_url)
    try:
        await database.start()
        await ProfileStore(database, SEALED).add(profile)
    finally:
        await database.close()
    return profile


async def ledger_rows(database_url: str, user_id: str) -> list[dict[str, Any]]:
    database = Database(database_url)
    try:
        await database.start()
        return await _ledger_rows(database, user_id)
    finally:
        await database.close()


async def _ledger_rows(database: Database, user_id: str) -> list[dict[str, Any]]:
    async with database.connect() as conn:
        result = await conn.execute(sa.text("SELECT * FROM usage_ledger WHERE user_id = :u"), {"u": user_id})
        return [dict(row) for row in result.mappings().all()]


async def wait_for_rows(database_url: str, user_id: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The ledger writes in batches (every 200 ms); wait until `count` settled rows are there."""
    deadline = time.monotonic() + timeout
    database = Database(database_url)  # one for every look: opening one costs more than the query
    try:
        await database.start()
        while True:
            rows = await _ledger_rows(database, user_id)
            settled = [row for row in rows if row["state"] == "settled"]
            if len(settled) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.02)
    finally:
        await database.close()


def settings_variables() -> set[str]:
    """Every environment variable the gateway reads (SPEC §3), aliases included."""
    from pydantic import AliasChoices

    from agent_gateway.settings import Settings

    names = set()
    for name, info in Settings.model_fields.items():
        names.add(name.upper())
        if isinstance(info.validation_alias, AliasChoices):
            names.update(str(choice) for choice in info.validation_alias.choices)
    return names


class Cli:
    """`agent-gateway` with exactly the environment given, nothing of the caller's shell (run it in a
    directory without a `.env`)."""

    def __init__(self, **env: str) -> None:
        self.env: dict[str, str | None] = {name: None for name in settings_variables()}
        self.env.update(env)

    def __call__(self, *args: str, **env: str) -> Result:
        return CliRunner().invoke(cli_main, list(args), env={**self.env, **env})

    def ok(self, *args: str, **env: str) -> str:
        result = self(*args, **env)
        assert result.exit_code == 0, result.output
        return result.stdout

    def fails(self, *args: str, code: int | None = None, **env: str) -> str:
        """The one stderr line of a failure."""
        result = self(*args, **env)
        assert result.exit_code != 0, result.output
        if code is not None:
            assert result.exit_code == code
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A redis-server of a test's own on `port` (never the shared one), answering when this returns."""
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def pytest_collection(session: pytest.Session) -> None:
    if not session.config.pluginmanager.hasplugin("dsession"):  # not the xdist controller: it runs no test
        FORKS.start()  # its imports (~0.8 s) overlap the collection


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> Iterator[None]:
    """Last to go: the gateways are stopped by then."""
    yield
    FORKS.close()


@pytest.fixture(scope="session")
def litellm() -> Iterator[FakeLiteLLM]:
    fake = FakeLiteLLM().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def launch_gateway(
    litellm: FakeLiteLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts gateways that live for the session (shared by a module's tests)."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        workdir = tmp_path_factory.mktemp("gateway")
        base = {
            "AGENT_SECRET_KEY": SECRET,
            "AGENT_TOKEN_KEY": TOKEN_KEY,
            "KEY_ENCRYPTION_KEY": SEAL_KEY,
            "LITELLM_BASE_URL": litellm.url,
            "DATABASE_URL": f"sqlite:///{workdir}/gateway.db",
            # Its own home: the default outbox of a gateway on PostgreSQL is there, and test
            # sessions on one machine must not replay each other's rows.
            "AGENT_GATEWAY_HOME": str(workdir / "home"),
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_SECONDS": "5",
            # The 50 ms default counts the event loop's delays too, and these gateways run under
            # coverage on two cores shared with other tests: a late reply is that, not a Redis fault.
            "REDIS_TIMEOUT": "1",
        }
        process = GatewayProcess({**base, **env}, workdir).start()
        started.append(process)
        return process

    yield start
    stop_all(started)


@pytest.fixture
def gateway_factory(launch_gateway: Callable[..., GatewayProcess]) -> Iterator[Callable[..., GatewayProcess]]:
    """Starts gateways for one test, stopped when it ends (so no idle process competes for the CPU).
    Their exits are awaited at the session's end: a drain takes ~0.2 s the next test need not wait."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        started.append(launch_gateway(**env))
        return started[-1]

    yield start
    for gw in started:
        gw.stop()


def stop_all(gateways: list[GatewayProcess]) -> None:
    for gw in gateways:  # all at once: each drains on its own
        gw.stop()
    for gw in gateways:
        gw.terminate()


@pytest.fixture(scope="session")
def gateway(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    """The gateway on embedded defaults (SQLite, in-process limits)."""
    return launch_gateway()


@pytest.fixture
def user(gateway: GatewayProcess) -> str:
    user_id = new_user()
    run(add_profile(gateway.database_url, user_id))
    return user_id


def _require(name: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as exc:  # make test starts the servers; reaching here means they are down
        pytest.exit(f"{name} is not reachable ({type(exc).__name__}); `make test` starts it", returncode=3)


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require("Redis at TEST_REDIS_URL", lambda: redis.Redis.from_url(TEST_REDIS_URL).ping())
    return TEST_REDIS_URL


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL URL whose search path is a schema of this test's own."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{TEST_DATABASE_URL}?schema={schema}"
    database = Database(url)
    try:
        await database.ping()
    except Exception as exc:
        pytest.exit(f"PostgreSQL at TEST_DATABASE_URL is not reachable ({type(exc).__name__})", returncode=3)
    yield url
    async with database.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await database.close()
