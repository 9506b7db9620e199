"""The deployment files as an operator uses them. No Docker daemon runs here, so the image's own
install lines run in a fresh virtual environment, its `HEALTHCHECK` against the server they
installed; the compose file and the systemd unit are read for what several instances need."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
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


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's install RUN line, run as written but into a directory of its own instead of
    /opt/venv, in a copy of the build context. Cached by the lock file and the sources' hash."""
    sources = sorted((ROOT / "src").rglob("*"))
    digest = hashlib.sha256(DOCKERFILE.encode() + (ROOT / "requirements.lock").read_bytes())
    for path in sources:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.read_bytes())
    venv = Path(_CACHE).expanduser() / "image-venvs" / digest.hexdigest()[:16]
    if (venv / ".installed").exists():
        return venv
    context = tmp_path_factory.mktemp("build-context")
    for name in ("requirements.lock", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
    install = next(line for line in instructions("RUN") if "requirements.lock" in line)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    command = install.replace("/opt/venv", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
    done = subprocess.run(["bash", "-c", command], cwd=context, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (venv / ".installed").touch()
    return venv


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
        assert (tmp_path / "home" / "gateway.db").exists()  # the default store, in the user's home
    finally:
        server.terminate()
        assert server.wait(30) == 0  # SIGTERM, the image's STOPSIGNAL, drains and exits cleanly


def test_compose_runs_two_instances_on_one_redis_and_postgresql() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    gateways = [service for service in services.values() if service.get("build") == "."]
    assert len(gateways) == 2
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    shared = {(g["environment"]["DATABASE_URL"], g["environment"]["REDIS_URL"]) for g in gateways}
    assert len(shared) == 1 and next(iter(shared))[0].startswith("postgresql://")
    for gateway in gateways:
        assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/ping" in " ".join(gateway["healthcheck"]["test"])
        grace = int(gateway["stop_grace_period"].removesuffix("s"))
        assert grace > 30  # SHUTDOWN_GRACE_SECONDS' default
    assert len({g["ports"][0].split(":")[0] for g in gateways}) == 2


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
