"""The deployment files as an operator uses them. No Docker daemon runs here, so the image's own
install lines run in a fresh virtual environment, its `HEALTHCHECK` against the server they
installed; the compose file and the systemd unit are read for what several instances need."""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet
from dotenv import dotenv_values

from agent_gateway.settings import load_settings
from tests.conftest import free_port, settings_variables

# One worker: the image venv is locked while in use, so a second worker would wait for it.
pytestmark = pytest.mark.xdist_group("deployment")

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The .env an operator starts from: docs/deployment.md says to copy .env.example and set the secrets.
EXAMPLE_ENV = {name: value or "" for name, value in dotenv_values(ROOT / ".env.example").items()}
_CACHE = Path(
    os.environ.get("AGENT_GATEWAY_CACHE")
    or ("/var/cache/agent-gateway" if os.geteuid() == 0 else "~/.cache/agent-gateway")
)


def instructions(name: str) -> list[str]:
    """The Dockerfile's `name` instructions, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1].strip() for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_the_image_is_slim_runs_as_a_user_and_checks_ping() -> None:
    assert instructions("FROM")[0].endswith("-slim")
    assert instructions("USER")[-1] not in ("root", "0")
    healthcheck = instructions("HEALTHCHECK")[0]
    assert "/ping" in healthcheck and "CMD" in healthcheck
    install = " ".join(instructions("RUN"))
    # The locked dependencies, then the package alone: what `make run` does.
    assert re.search(r"pip install -r requirements\.lock .*pip install --no-deps \.", install)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --disable-pip-version-check -r requirements-dev.lock" in makefile
    assert "--no-deps -e ." in makefile
    copied = " ".join(instructions("COPY"))
    assert "requirements.lock" in copied and "src" in copied


def image_env() -> dict[str, str]:
    """What the image's `ENV` lines set."""
    return dict(part.split("=", 1) for line in instructions("ENV") for part in shlex.split(line))


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Dockerfile's install line, run as written but into a directory of its own instead of
    /opt/venv, in a copy of the build context. Its steps up to the locked dependencies are cached,
    keyed by their text and the lock file; the package's own step runs when the context changed."""
    install = next(line for line in instructions("RUN") if "requirements.lock" in line)
    steps = [step.strip() for step in install.split("&&")]
    locked = max(i for i, step in enumerate(steps) if "requirements.lock" in step) + 1
    key = hashlib.sha256("\n".join([sys.version, *steps[:locked]]).encode() + (ROOT / "requirements.lock").read_bytes())
    venv = _CACHE.expanduser() / "image-venvs" / f"locked-{key.hexdigest()[:16]}"
    context = tmp_path_factory.mktemp("build-context")
    for name in ("requirements.lock", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))

    def run(commands: list[str]) -> None:
        command = " && ".join(commands).replace("/opt/venv", str(venv))
        command = command.replace("python -m venv", f"{sys.executable} -m venv")
        done = subprocess.run(["bash", "-c", command], cwd=context, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    venv.parent.mkdir(parents=True, exist_ok=True)
    with Path(f"{venv}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one session at a time installs into this venv and serves from it
        if not (venv / ".installed").exists():
            shutil.rmtree(venv, ignore_errors=True)
            run(steps[:locked])
            (venv / ".installed").touch()
        # This checkout's package, over whatever an earlier run left: again only if the context changed.
        package = hashlib.sha256("\n".join(steps[locked:]).encode())
        for path in sorted(p for p in context.rglob("*") if p.is_file()):
            package.update(f"{path.relative_to(context)}\0".encode() + path.read_bytes())
        installed = venv / ".package"
        if not installed.exists() or installed.read_text() != package.hexdigest():
            installed.unlink(missing_ok=True)
            run(steps[locked:])
            installed.write_text(package.hexdigest())
        yield venv


def test_the_image_install_serves_and_passes_its_healthcheck(image_venv: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": f"{image_venv / 'bin'}:{os.environ['PATH']}",
        "AGENT_GATEWAY_HOME": str(tmp_path / "home"),  # the image's defaults, but not its 0.0.0.0
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "AGENT_SECRET_KEY": "deployment-test-secret-4c2e",
    }
    command = json.loads(instructions("CMD")[-1])
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        healthcheck = instructions("HEALTHCHECK")[0]
        probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
        deadline = time.monotonic() + 30
        while subprocess.run(probe, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        ping = httpx.get(f"http://127.0.0.1:{port}/ping")
        assert (ping.status_code, ping.json()) == (200, {"status": "ok"})
        assert (tmp_path / "home" / "gateway.db").exists()  # the default store, in the user's home
    finally:
        server.terminate()
        assert server.wait(30) == 0  # SIGTERM, the image's STOPSIGNAL, drains and exits cleanly


def test_docker_run_with_the_example_env_answers_on_the_published_port() -> None:
    env = {**image_env(), **EXAMPLE_ENV}  # `docker run --env-file .env`: the file's values win
    assert env["HOST"] == "0.0.0.0"
    assert env["AGENT_GATEWAY_HOME"] in " ".join(instructions("VOLUME"))  # the store outlives the container
    assert f"EXPOSE {env['PORT']}" in DOCKERFILE


def compose_with(dotenv: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as Docker Compose reads it beside `dotenv`: `${NAME:-default}` filled in."""

    def value(match: re.Match[str]) -> str:
        return dotenv.get(match[1]) or match[2] or ""

    text = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", value, (ROOT / "compose.yaml").read_text())
    assert "${" not in text
    compose: dict[str, Any] = yaml.safe_load(text)
    return compose


def container_env(service: dict[str, Any], dotenv: dict[str, str]) -> dict[str, str]:
    """A service's environment as its container sees it: the image's, then env_file, then environment."""
    assert service["env_file"] == ".env"
    return {**image_env(), **dotenv, **{name: str(value) for name, value in service["environment"].items()}}


def host_of(url: str) -> str:
    host = urlsplit(url).hostname
    assert host is not None
    return host


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def test_compose_runs_two_instances_on_one_redis_and_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compose = compose_with(EXAMPLE_ENV)
    services = compose["services"]
    gateways = [service for service in services.values() if service.get("build") == "."]
    assert len(gateways) == 2
    envs = [container_env(gateway, EXAMPLE_ENV) for gateway in gateways]
    shared = {(env["DATABASE_URL"], env["REDIS_URL"]) for env in envs}
    assert len(shared) == 1
    database, redis_url = next(iter(shared))
    assert database.startswith("postgresql://") and "healthcheck" in services[host_of(database)]
    assert redis_url.startswith("redis://") and "healthcheck" in services[host_of(redis_url)]
    assert len({gateway["ports"][0].split(":")[0] for gateway in gateways}) == 2

    for gateway, env in zip(gateways, envs, strict=True):
        assert gateway["ports"][0].split(":")[1] == env["PORT"]
        assert env["HOST"] == "0.0.0.0"  # whatever .env says
        for dependency in ("postgres", "redis"):
            assert gateway["depends_on"][dependency]["condition"] == "service_healthy"
        assert f"127.0.0.1:{env['PORT']}/ping" in " ".join(gateway["healthcheck"]["test"])
        assert int(gateway["stop_grace_period"].removesuffix("s")) > float(env["SHUTDOWN_GRACE_SECONDS"])
        # Addresses other containers reach, never a container's own loopback.
        for name in ("DATABASE_URL", "REDIS_URL", "LITELLM_BASE_URL", "PUBLIC_BASE_URL"):
            assert not loopback(host_of(env[name])), name
        # Letta reaches the gateway by a name both instances answer to.
        assert host_of(env["PUBLIC_BASE_URL"]) in gateway["networks"]["default"]["aliases"]

    # With the secrets the docs say to set, the gateways' configuration passes production's checks.
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    secrets = {
        "AGENT_SECRET_KEY": os.urandom(32).hex(),
        "AGENT_TOKEN_KEY": os.urandom(32).hex(),
        "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ADMIN_API_KEY": os.urandom(32).hex(),
    }
    settings = load_settings(**{name.lower(): value for name, value in {**envs[0], **secrets}.items()})
    assert settings.is_production and settings.database_url == database


def test_the_systemd_unit_is_valid_and_drains() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "agent-gateway.service")
    service = unit["Service"]
    assert service["User"] != "root" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30 and shlex.split(service["ExecStart"])[-1] == "serve"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Verified as written, but with an executable that exists here.
    text = (ROOT / "deploy" / "agent-gateway.service").read_text()
    local = Path(sys.executable).with_name("agent-gateway")
    copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"agent-gateway-{os.getpid()}.service"
    copy.write_text(text.replace("/opt/agent-gateway/.venv/bin/agent-gateway", str(local)))
    try:
        done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    finally:
        copy.unlink()
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
