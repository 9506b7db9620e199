"""The admin page in a real browser (headless Chromium driven by Playwright): log in, add a user,
see their calls charted; and the session's guards (cookie flags, CSRF, expiry) over plain HTTP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from agent_gateway.ops.admin_page import COOKIE, AdminSessions
from tests.conftest import GatewayProcess, new_user

pytestmark = pytest.mark.xdist_group("admin_page")  # one worker: its gateway and browser start once, not on each

ADMIN_KEY = "admin-key-for-the-page-tests-5e1d"
USER_KEY = "sk-user-key-for-the-page-tests-77ab"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Screenshots stay here after the run, for a person to look at.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parents[2] / "var" / "test-artifacts"))


@pytest.fixture(scope="module")
def gw(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return launch_gateway(ADMIN_API_KEY=ADMIN_KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs it (Debian package `chromium`)")
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_log_in_add_a_user_and_see_their_calls_charted(gw: GatewayProcess, browser: object) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("pageerror", lambda error: failed.append(str(error)))

    page.goto(f"{gw.url}/admin")
    page.fill("#key", "not-the-key")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("That is not the admin key.")
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")
    expect(page.locator("#in-flight")).to_contain_text("in flight")
    expect(page.locator("#status")).to_contain_text("rate 100/minute · this instance")

    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the page's own script cannot read the session

    user_id = new_user()
    page.fill("#add-user input[name=id]", user_id)
    page.fill("#add-user input[name=litellm_key]", USER_KEY)
    page.fill("#add-user input[name=allowed_models]", "gpt-4o-mini, tokens-1000")
    page.fill("#add-user input[name=monthly_limit]", "100000")
    page.click("#add-user button[type=submit]")
    row = page.locator(f'#users tr[data-user="{user_id}"]')
    expect(row).to_contain_text("gpt-4o-mini, tokens-1000")
    expect(row).to_contain_text("100,000")

    client = gw.client(user_id)
    for model in ("gpt-4o-mini", "tokens-1000", "tokens-1000"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])

    page.reload()
    page.select_option("#usage-filter select[name=user_id]", user_id)
    bars = page.locator("#tokens-chart rect.bar")
    expect(bars).to_have_count(2)  # today, one bar per model
    assert set(bars.evaluate_all("bars => bars.map(b => b.dataset.series)")) == {"gpt-4o-mini", "tokens-1000"}
    expect(page.locator("#requests-chart rect.bar")).to_have_count(1)
    tokens_row = page.locator("#models tbody tr", has_text="tokens-1000")
    expect(tokens_row).to_contain_text("2,000")  # two calls of exactly 1,000 tokens each
    expect(page.locator(f'#users tr[data-user="{user_id}"]')).to_contain_text("%")  # of the monthly limit

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-page.png"), full_page=True)
    assert (ARTIFACTS / "admin-page.png").stat().st_size > 10_000

    row.get_by_role("button", name="Edit").click()
    page.fill(f'#users tr[data-user="{user_id}"] input[name=monthly_limit]', "200000")
    page.click(f'#users tr[data-user="{user_id}"] button[type=submit]')
    expect(row).to_contain_text("200,000")
    expect(row).to_contain_text("gpt-4o-mini, tokens-1000")  # only the edited field was sent

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove").click()
    expect(page.locator(f'#users tr[data-user="{user_id}"]')).to_have_count(0)
    assert failed == []  # every asset came from the gateway, and no script failed
    context.close()


def login(gw: GatewayProcess) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=gw.url)
    answer = client.post("/admin/login", data={"key": ADMIN_KEY})
    assert answer.status_code == 303
    page = client.get("/admin").text
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    return client, csrf


def test_api_calls_from_a_session_need_its_csrf_token(gw: GatewayProcess) -> None:
    client, csrf = login(gw)
    body = {"id": new_user(), "litellm_key": USER_KEY}
    refused = client.post("/api/v1/admin/users", json=body)  # the cookie alone, as another site would send it
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    forged = client.post("/api/v1/admin/users", json=body, headers={"X-CSRF-Token": "forged"})
    assert forged.status_code == 401
    assert client.get(f"/api/v1/admin/users/{body['id']}", headers={"X-CSRF-Token": csrf}).status_code == 404
    created = client.post("/api/v1/admin/users", json=body, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201
    other, _ = login(gw)
    assert other.get("/api/v1/admin/status", headers={"X-CSRF-Token": csrf}).status_code == 401  # not its token
    client.close()
    other.close()


def test_the_page_loads_nothing_from_elsewhere_and_cannot_be_framed(gw: GatewayProcess) -> None:
    answer = httpx.get(f"{gw.url}/admin")
    assert answer.status_code == 200 and 'action="/admin/login"' in answer.text
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "http" not in answer.text.split("<body")[0]  # no asset from another host
    assert httpx.get(f"{gw.url}/admin/assets/admin.js").status_code == 200


def test_sessions_expire_and_are_bound_to_the_admin_key() -> None:
    sessions = AdminSessions(SecretStr(ADMIN_KEY), secure=True)
    token = sessions.issue(now=1_000_000)
    assert sessions.valid(token, now=1_000_060)
    assert not sessions.valid(token, now=1_000_000 + 8 * 3600 + 1)  # a login lasts 8 hours
    expires, nonce, signature = token.split(".")
    assert not sessions.valid(f"{int(expires) + 3600}.{nonce}.{signature}", now=1_000_060)  # tampered
    assert not AdminSessions(SecretStr("another-admin-key-0000"), secure=True).valid(token, now=1_000_060)
    assert not sessions.valid(None) and not sessions.valid("garbage")


def test_without_an_admin_key_there_is_no_page(launch_gateway: Callable[..., GatewayProcess]) -> None:
    gw = launch_gateway()
    answer = httpx.get(f"{gw.url}/admin")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert "ADMIN_API_KEY is not set" in gw.logs()


def test_guessing_the_key_is_slowed_to_ten_tries_a_minute(launch_gateway: Callable[..., GatewayProcess]) -> None:
    gw = launch_gateway(ADMIN_API_KEY=ADMIN_KEY)  # its own: the other tests log in from this address too
    with httpx.Client(base_url=gw.url) as client:
        tries = [client.post("/admin/login", data={"key": f"guess-{n}"}).status_code for n in range(12)]
        assert tries == [401] * 10 + [429] * 2
        refused = client.post("/admin/login", data={"key": ADMIN_KEY})
        assert refused.status_code == 429 and refused.headers["retry-after"]  # even the right key, for now


def test_red_team_finds_stay_fixed(launch_gateway: Callable[..., GatewayProcess]) -> None:
    """What a red team found on the page and the admin API, each now refused cleanly."""
    gw = launch_gateway(ADMIN_API_KEY=ADMIN_KEY)
    client, csrf = login(gw)
    api = {"X-CSRF-Token": csrf}
    # Logging out ends the session here, even for a copy of its cookie.
    session = client.cookies[COOKIE]
    assert client.post("/admin/logout", headers=api).status_code == 204
    replayed = httpx.get(f"{gw.url}/api/v1/admin/status", headers=api, cookies={COOKIE: session})
    assert replayed.status_code == 401
    client, csrf = login(gw)
    api = {"X-CSRF-Token": csrf}
    # A limit past BIGINT, a month with a newline: 400 in the §8 shape, not a 500.
    big = client.post(
        "/api/v1/admin/users", headers=api, json={"id": new_user(), "litellm_key": USER_KEY, "monthly_limit": 2**63}
    )
    assert big.status_code == 400 and big.json()["error"]["param"] == "monthly_limit"
    assert client.get("/api/v1/admin/usage", headers=api, params={"month": "2026-01\n"}).status_code == 400
    # A non-ASCII cookie or token is a 401, not a 500.
    odd = httpx.get(f"{gw.url}/api/v1/admin/status", headers={b"X-CSRF-Token": "é".encode()}, cookies={COOKIE: session})
    assert odd.status_code == 401
    # The page templates are not served raw; only the script and the style sheet are.
    assert httpx.get(f"{gw.url}/admin/assets/pages/admin.html").status_code == 404
    assert httpx.get(f"{gw.url}/admin/assets/admin.css").headers["x-content-type-options"] == "nosniff"
    client.close()


def test_usage_of_a_uuid_user_in_any_spelling(gw: GatewayProcess) -> None:
    user_id = "6b1e5c1e-9d2f-4c5a-8f7e-3a2b1c0d9e8f"
    client, csrf = login(gw)
    api = {"X-CSRF-Token": csrf}
    assert (
        client.post("/api/v1/admin/users", headers=api, json={"id": user_id, "litellm_key": USER_KEY}).status_code
        == 201
    )
    gw.client(user_id).chat.completions.create(model="tokens-1000", messages=[{"role": "user", "content": "hi"}])
    for spelling in (user_id.upper(), user_id.replace("-", "")):
        usage = client.get("/api/v1/admin/usage", headers=api, params={"user_id": spelling}).json()
        assert usage["total_tokens"] == 1000 and usage["user_id"] == user_id
    client.close()
