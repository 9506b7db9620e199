"""The docs as a reader meets them: `/docs` and `/redoc` working with the network off, examples on
every route, the README's quick start run as written, and reference pages that cannot drift."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_gateway import errors
from agent_gateway.settings import Settings
from tests.conftest import GatewayProcess, add_profile, run, settings_variables
from tests.fakes.litellm import FakeLiteLLM

pytestmark = pytest.mark.xdist_group("docs")  # one worker: its gateway starts once, not on each

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
README_SECRET = "change-me-agent-secret"  # the README's own example secret


@pytest.fixture(scope="module")
def gw(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return launch_gateway(AGENT_SECRET_KEY=README_SECRET, ADMIN_API_KEY="docs-test-admin-key-31f8")


def test_docs_pages_render_with_the_network_off(gw: GatewayProcess) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    elsewhere: list[str] = []

    def only_the_gateway(route: Any) -> None:
        if route.request.url.startswith(gw.url):
            route.continue_()
        else:  # the network is off: anything from another host fails, and is noted
            elsewhere.append(route.request.url)
            route.abort()

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.route("**/*", only_the_gateway)
        page.goto(f"{gw.url}/docs")
        page.locator(".opblock").first.wait_for()
        assert page.locator(".opblock").count() > 20  # every route, agents to admin
        page.goto(f"{gw.url}/redoc")
        page.locator("h2", has_text="Chat completion").first.wait_for()
        browser.close()
    assert elsewhere == []


def test_docs_pages_reference_only_assets_the_gateway_serves(gw: GatewayProcess) -> None:
    """Without a browser: each script, stylesheet and icon the pages name is on the gateway, and real."""
    bundles = {"/docs": "SwaggerUIBundle", "/redoc": "Redoc"}
    for page, bundle_name in bundles.items():
        answer = httpx.get(f"{gw.url}{page}")
        assert answer.status_code == 200
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        assets = re.findall(r"<(?:script|link)\b[^>]*?(?:src|href)=[\"']([^\"']+)", answer.text)
        assert len(assets) >= 2, answer.text  # its script, and its stylesheet or icon
        assert not re.search(r"https?://", answer.text), "the page names another host"
        scripts = []
        for asset in assets:
            url = httpx.URL(gw.url).join(asset)
            assert url.host == "127.0.0.1" and url.port == gw.port, asset
            served = httpx.get(url)
            assert served.status_code == 200, asset
            assert len(served.content) > 1000, asset  # the file itself, not an empty placeholder
            if asset.endswith(".js"):
                scripts.append(served.text)
        assert any(bundle_name in script for script in scripts), f"{page}: no {bundle_name} among its scripts"


def test_every_described_route_has_request_and_answer_examples(gw: GatewayProcess) -> None:
    spec = httpx.get(f"{gw.url}/openapi.json").json()
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            outside_fastapi = {"agents", "frontend", "letta", "ams"} & set(operation["tags"])
            if outside_fastapi and method in ("post", "put", "patch") and "requestBody" not in operation:
                missing.append(f"{name}: request")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and not (body.get("examples") or body.get("example") or _schema_examples(spec, body)):
                missing.append(f"{name}: request")
            for status, answer in operation["responses"].items():
                for media in answer.get("content", {}).values():
                    if not (media.get("examples") or media.get("example") or _schema_examples(spec, media)):
                        missing.append(f"{name}: {status}")
    assert missing == [], missing
    empty = [found for found in _example_values(spec["paths"]) if found in ({}, [], "", None)]
    assert empty == []  # a sample of `{}` tells a reader nothing


def test_the_docs_show_streams_errors_and_pass_through_calls(gw: GatewayProcess) -> None:
    paths = httpx.get(f"{gw.url}/openapi.json").json()["paths"]
    chat = paths["/api/v1/agents/{user_id}/messages/chat/completions"]["post"]
    stream = chat["responses"]["200"]["content"]["text/event-stream"]["example"]
    assert stream.endswith("data: [DONE]\n\n") and '"usage"' in stream
    refused = chat["responses"]["403"]["content"]["application/json"]["examples"]["model_not_allowed"]["value"]
    assert set(refused["error"]) == {"message", "type", "code", "param", "request_id"}  # SPEC §8's body
    letta = paths["/api/v1/letta/{path}"]["post"]
    assert "agents/{agent_id}/messages/stream" in letta["description"]  # the allow-list, from its table
    assert "[DONE]" in letta["responses"]["200"]["content"]["text/event-stream"]["examples"]["stream_message"]["value"]
    assert "put" not in paths["/api/v1/letta/{path}"]  # no Letta route the gateway allows takes PUT
    usage = paths["/api/v1/admin/usage"]["get"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert isinstance(usage["one_user"]["value"], dict) and isinstance(usage["every_user"]["value"], list)


def _example_values(node: Any) -> list[Any]:
    """Every `example` and named example's `value` in the paths."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "example":
                found.append(value)
            elif key == "examples" and isinstance(value, dict):
                found += [named.get("value") for named in value.values() if isinstance(named, dict)]
            else:
                found += _example_values(value)
    elif isinstance(node, list):
        for item in node:
            found += _example_values(item)
    return found


def _schema_examples(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    """FastAPI's own routes carry their examples on the schema they point at."""
    schema = media.get("schema", {})
    for candidate in (schema, *schema.get("anyOf", []), schema.get("items", {})):
        ref = candidate.get("$ref", "")
        target = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}) if ref else candidate
        if target.get("examples") or target.get("example"):
            return True
    return False


def test_the_readme_quick_start_runs_as_written(gw: GatewayProcess, litellm: FakeLiteLLM) -> None:
    """Every command of steps 1-4, with this test's gateway and fake LiteLLM for 8000 and 4000."""
    text = README.read_text()
    start = text.index("### 1. Serve")
    quick_start = text[start : text.index("### 5. Letta", start)]
    blocks = re.findall(r"```(sh|python)\n(.*?)```", quick_start, re.S)
    commands = [
        _joined(line)
        for kind, block in blocks
        if kind == "sh"
        for line in _logical_lines(block)
        if line.startswith(("curl", ".venv/bin/agent-gateway"))
    ]
    python = [block for kind, block in blocks if kind == "python"]
    assert len(commands) >= 4 and len(python) == 1
    env = {**os.environ, **gw.env}

    def ours(snippet: str) -> str:
        host = gw.url.removeprefix("http://")
        return snippet.replace("127.0.0.1:8000", host).replace("http://127.0.0.1:4000", litellm.url)

    outputs = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", ours(command)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout)
    assert outputs[0].strip() == '{"status":"ok"}'  # as the README says it prints
    assert any('"chat.completion"' in output for output in outputs)  # the curl call was answered
    done = subprocess.run(
        [sys.executable, "-c", ours(python[0])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed_completion, streamed = done.stdout.rstrip("\n").rsplit("\n", 1)
    assert "ChatCompletion(" in printed_completion
    assert streamed and "None" not in streamed  # the stream's text, and nothing after it


def test_the_routes_reference_agent_call_runs_as_written(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(AGENT_SECRET_KEY=README_SECRET)
    run(add_profile(gw.database_url, "alice", allowed_models=frozenset({"gpt-4o-mini"})))
    text = (ROOT / "docs" / "routes.md").read_text()
    calls = [block for block in re.findall(r"```sh\n(.*?)```", text, re.S) if "/api/v1/agents/" in block]
    assert calls
    for call in calls:
        command = call.replace("127.0.0.1:8000", gw.url.removeprefix("http://"))
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["object"] == "chat.completion", done.stdout


def _logical_lines(block: str) -> list[str]:
    """Shell lines with their backslash continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _joined(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line)  # the README's trailing comments say what it prints


def test_the_configuration_reference_lists_every_setting() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z0-9_]+)`", reference, re.M))
    assert listed == {name.upper() for name in Settings.model_fields}


def test_the_configuration_reference_gives_each_default_as_the_gateway_has_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A default written as a value must be the gateway's own; `–` means unset; the few computed from
    other settings say so in words."""
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env
    defaults = Settings()
    reference = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (.*?) \|", reference, re.M)
    described = []
    for variable, default in rows:
        field = variable.lower()
        if default == "–":
            assert getattr(defaults, field) in (None, ()), variable
        elif re.fullmatch(r"`[^`$]+`", default):
            documented = Settings(**{field: default.strip("`")})
            assert getattr(documented, field) == getattr(defaults, field), variable
        else:
            described.append(variable)
    assert sorted(described) == ["AGENT_GATEWAY_HOME", "DATABASE_URL", "LEDGER_OUTBOX"]


def test_the_error_reference_lists_every_error() -> None:
    reference = (ROOT / "docs" / "errors.md").read_text()
    pending, codes = [errors.GatewayError], set()
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        codes.add((kind.status_code, kind.code or kind.type))
    listed = {(int(status), code) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)`", reference, re.M)}
    assert listed == codes


def test_the_readme_and_docs_link_only_inside_the_repository() -> None:
    for page in [README, *(ROOT / "docs").glob("*.md")]:
        text = page.read_text()
        assert "../shared" not in text, page.name
        for target in re.findall(r"\]\(([^)#]+)", text):
            if target.startswith(("http://", "https://")):
                assert page != README, f"the README links outside the repository: {target}"
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT), f"{page.name}: {target}"
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
