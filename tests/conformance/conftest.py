"""The platform as it runs: a real Letta server (0.11.7, then 0.16.8), a real LiteLLM proxy, and
the gateway between them as `agent-gateway serve` processes, with two signed-in users.

Letta calls the gateway back on each user's agent route with the agent secret (its
`OPENAI_API_KEY`). Its `OPENAI_BASE_URL`, where it lists models and would send calls that
name a handle, is the gateway too, on the route of a user with no profile, as the README
tells operators to set it: the secret never leaves the platform. A catcher stands where an
attacker would point Letta; nothing may ever reach it.

Two gateways share the Letta server: `gateway` in front of the real LiteLLM proxy, and
`fake_gateway` in front of the project's fake LiteLLM, for what the proxy's mock models
cannot do (tool loops, streamed tool calls, null usage details, slow and hanging answers).
Servers start once per run; the Letta of one version stops before the next starts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conformance.servers import LETTA_PASSWORD, LettaServer, LiteLLMProxy
from tests.conformance.venvs import LETTA_0_11, LETTA_0_16, LITELLM
from tests.conftest import SEAL_KEY, SECRET, TOKEN_KEY, GatewayProcess, add_profile, free_port, run, wait_for_rows
from tests.fakes.catcher import Catcher
from tests.fakes.litellm import FakeLiteLLM

JWT_SECRET = "conformance-supabase-jwt-secret-0123456789abcdef"
VERSIONS = ("0.11.7", "0.16.8")
NO_PROFILE = "letta-server"  # the user on Letta's OPENAI_BASE_URL: no profile, so nothing is billed there
TURN_TIMEOUT = 6.0  # the fake gateway's LLM_TIMEOUT: how long it waits for one agent turn


@dataclass(frozen=True)
class User:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Gateway:
    """One gateway process and the frontend's way into Letta through it."""

    process: GatewayProcess

    @property
    def url(self) -> str:
        return self.process.url

    def call(self, user: User, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 120)
        return httpx.request(method, f"{self.url}/api/v1/letta{path}", headers=user.headers, **kwargs)

    def rows(self, user: User, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = run(wait_for_rows(self.process.database_url, user.id, count, timeout))
        return rows

    def turn(self, user: User, agent: str, text: str = "hello", **body: Any) -> httpx.Response:
        messages = [{"role": "user", "content": text}]
        return self.call(user, "POST", f"/agents/{agent}/messages", json={"messages": messages, **body})

    def new_agent(self, user: User, model: str, **body: Any) -> str:
        body = {
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "model": model,
            "embedding": "openai/text-embedding-3-small",
            **body,
        }
        created = self.call(user, "POST", "/agents", json=body)
        assert created.status_code == 200, created.text
        agent_id: str = created.json()["id"]
        return agent_id


@dataclass
class Platform:
    gateway: Gateway
    fake_gateway: Gateway
    fake_litellm: FakeLiteLLM
    letta: LettaServer
    catcher: Catcher
    alice: User
    bob: User

    @property
    def version(self) -> str:
        return self.letta.version

    @property
    def chat_model(self) -> str:
        """The proxy's mock model the default agent of this Letta version finishes a turn on."""
        return "openai/gpt-4o-mini" if self.version == "0.11.7" else "openai/gpt-4o"

    def call(self, user: User, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.gateway.call(user, method, path, **kwargs)

    def new_user(self, name: str = "carol", **profile: Any) -> User:
        """A signed-in user of this test alone, with a profile on both gateways."""
        user = signed_in(name)
        for gateway in (self.gateway, self.fake_gateway):
            run(add_profile(gateway.process.database_url, user.id, litellm_key=f"sk-{user.id}", **profile))
        return user

    def letta_direct(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Letta itself, as an operator reaches it (never a user)."""
        kwargs.setdefault("timeout", 60)
        return httpx.request(method, f"{self.letta.url}/v1{path}", headers=self.letta.headers, **kwargs)

    def wait_for_file(self, user: User, folder: str, timeout: float = 60) -> dict[str, Any]:
        """The folder's one file once Letta has parsed and embedded it."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.call(user, "GET", f"/folders/{folder}/files").json()
            if files and files[0].get("processing_status") in ("completed", "error") or time.monotonic() > deadline:
                assert files, "the upload never showed up"
                found: dict[str, Any] = files[0]
                return found
            time.sleep(0.5)


def signed_in(name: str) -> User:
    user_id = f"{name}-{uuid.uuid4().hex[:8]}"
    claims = {"sub": user_id, "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 7200}
    return User(user_id, jwt.encode(claims, JWT_SECRET, algorithm="HS256"))


@pytest.fixture(scope="session")
def catcher() -> Iterator[Catcher]:
    server = Catcher().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    proxy = LiteLLMProxy("litellm", tmp_path_factory.mktemp("litellm")).start(LITELLM.ensure())
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def fake_litellm() -> Iterator[FakeLiteLLM]:
    fake = FakeLiteLLM().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"letta-{v}" for v in VERSIONS])
def platform(
    request: pytest.FixtureRequest,
    litellm_proxy: LiteLLMProxy,
    fake_litellm: FakeLiteLLM,
    catcher: Catcher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    version: str = request.param
    (LETTA_0_11 if version == "0.11.7" else LETTA_0_16).ensure()
    root = tmp_path_factory.mktemp(f"platform-{version}")
    ports = free_port(), free_port()
    letta = LettaServer(
        f"letta-{version}",
        root / "letta",
        version=version,
        agent_secret=SECRET,
        openai_base_url=f"http://127.0.0.1:{ports[0]}/api/v1/agents/{NO_PROFILE}/messages",
    ).start()
    common = {
        "AGENT_SECRET_KEY": SECRET,
        "AGENT_TOKEN_KEY": TOKEN_KEY,
        "KEY_ENCRYPTION_KEY": SEAL_KEY,  # add_profile seals keys as the other test gateways do
        "LETTA_BASE_URL": letta.url,
        "LETTA_API_KEY": LETTA_PASSWORD,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SHUTDOWN_GRACE_SECONDS": "2",
    }
    real = GatewayProcess(
        {
            **common,
            "LITELLM_BASE_URL": litellm_proxy.url,
            "DATABASE_URL": f"sqlite:///{root}/gateway.db",
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports[0]}",
        },
        _directory(root / "gateway"),
        port=ports[0],
    )
    fake = GatewayProcess(
        {
            **common,
            "LITELLM_BASE_URL": fake_litellm.url,
            "DATABASE_URL": f"sqlite:///{root}/fake-gateway.db",
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports[1]}",
            "REQUEST_TIMEOUT": "2",
            "LLM_TIMEOUT": str(TURN_TIMEOUT),
            "BREAKER_THRESHOLD": "2",
        },
        _directory(root / "fake-gateway"),
        port=ports[1],
    )
    try:
        letta.wait_ready()
        real.start()
        fake.start()
        alice, bob = signed_in("alice"), signed_in("bob")
        for gateway in (real, fake):
            for user in (alice, bob):
                run(add_profile(gateway.database_url, user.id, litellm_key=f"sk-{user.id}"))
        yield Platform(Gateway(real), Gateway(fake), fake_litellm, letta, catcher, alice, bob)
    finally:
        for gateway in (real, fake):
            if gateway.process is not None:
                gateway.terminate()
        letta.stop()
        assert catcher.caught == [], f"Letta called a URL outside the platform: {catcher.caught}"


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
