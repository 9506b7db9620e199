"""With LITELLM_MASTER_KEY the gateway makes, updates, rotates and deletes users' LiteLLM keys
(ops/users.py, upstream/litellm_admin.py), and a failed step leaves nothing half-done.

LiteLLM's key database cannot run here (its Prisma engines are downloaded from outside the
package registries), so LiteLLM is tests/fakes/litellm.py: its documented key API over real
HTTP, with the master key, the same request and answer fields and error shapes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_gateway.domain import mask_key
from tests.conftest import SECRET, Cli, GatewayProcess, free_port, new_user, run, wait_for_rows
from tests.fakes.litellm import MASTER_KEY, FakeLiteLLM
from tests.ops.test_admin_users import ADMIN_KEY, Admin, error_of
from tests.stores.test_profile_changes import status

pytestmark = pytest.mark.xdist_group("key_provisioning")  # one worker: its gateway starts once, not on each

SOON = ": takes effect within 1 s on every instance\n"


@pytest.fixture(scope="module")
def gw(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return launch_gateway(ADMIN_API_KEY=ADMIN_KEY, LITELLM_MASTER_KEY=MASTER_KEY)


@pytest.fixture
def admin(gw: GatewayProcess) -> Iterator[Admin]:
    client = Admin(gw)
    yield client
    client.close()


@pytest.fixture
def cli(litellm: FakeLiteLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)
    return Cli(DATABASE_URL=f"sqlite:///{tmp_path}/gw.db", LITELLM_BASE_URL=litellm.url, LITELLM_MASTER_KEY=MASTER_KEY)


def refuse(cli: Cli, write: str, user_id: str) -> None:
    """Make the database refuse one kind of write (INSERT, UPDATE, DELETE) to one user's row."""
    cli.ok("users", "list")  # the schema exists
    path = str(cli.env["DATABASE_URL"]).removeprefix("sqlite:///")
    row = "OLD" if write == "DELETE" else "NEW"
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_{write.lower()} BEFORE {write} ON user_profiles WHEN {row}.id = '{user_id}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


def sent_key(litellm: FakeLiteLLM, user_id: str) -> str:
    """The key the gateway last sent LiteLLM for `user_id`'s call."""
    return litellm.for_user(user_id)[-1].headers["Authorization"].removeprefix("Bearer ")


def key_updates(litellm: FakeLiteLLM, key: str) -> int:
    return sum(1 for seen in litellm.requests if seen.path == "/key/update" and (seen.body or {}).get("key") == key)


def test_a_new_user_gets_a_key_of_their_own_that_follows_them(
    admin: Admin, gw: GatewayProcess, litellm: FakeLiteLLM
) -> None:
    user_id = new_user()
    created = admin.post("/users", json={"id": user_id, "allowed_models": ["gpt-4o-mini"]})
    assert created.status_code == 201, created.text
    [key] = litellm.keys_of(user_id)
    assert created.json()["litellm_key_hint"] == mask_key(key)
    made = litellm.keys[key]
    assert (made.models, made.metadata) == (["gpt-4o-mini"], {"created_by": "agent-gateway"})
    assert status(gw, user_id) == 200
    assert sent_key(litellm, user_id) == key

    assert admin.patch(f"/users/{user_id}", json={"allowed_models": ["gpt-4o", "gpt-4o-mini"]}).status_code == 200
    assert litellm.keys[key].models == ["gpt-4o", "gpt-4o-mini"]
    assert admin.patch(f"/users/{user_id}", json={"allowed_models": None}).status_code == 200
    assert litellm.keys[key].models == []  # LiteLLM: every model
    updates = key_updates(litellm, key)
    assert admin.patch(f"/users/{user_id}", json={"monthly_limit": 10**6}).status_code == 200
    assert key_updates(litellm, key) == updates  # nothing of LiteLLM's changed, nothing sent

    rotated = admin.post(f"/users/{user_id}/rotate-key")
    assert rotated.status_code == 200, rotated.text
    [new_key] = litellm.keys_of(user_id)
    assert new_key != key and key in litellm.deleted
    assert rotated.json()["litellm_key_hint"] == mask_key(new_key)
    assert status(gw, user_id) == 200  # this gateway uses the new key at once
    assert sent_key(litellm, user_id) == new_key
    old = httpx.post(f"{litellm.url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={})
    assert old.status_code == 401

    assert admin.delete(f"/users/{user_id}").status_code == 204
    assert litellm.keys_of(user_id) == [] and new_key in litellm.deleted


def test_keys_are_not_given_by_hand_when_the_gateway_makes_them(admin: Admin, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    error = error_of(admin.post("/users", json={"id": user_id, "litellm_key": "sk-by-hand-0000"}), 400)
    assert error["param"] == "litellm_key"
    assert litellm.keys_of(user_id) == []
    admin.post("/users", json={"id": user_id})
    assert error_of(admin.patch(f"/users/{user_id}", json={"litellm_key": "sk-by-hand-0000"}), 400)["param"] == (
        "litellm_key"
    )
    admin.delete(f"/users/{user_id}")


def test_a_refused_key_request_is_a_502_and_changes_nothing(admin: Admin, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    litellm.fail("/key/generate", 500)
    error = error_of(admin.post("/users", json={"id": user_id}), 502)
    assert (error["type"], error["code"]) == ("upstream_error", "key_provisioning_failed")
    assert error["message"] == "LiteLLM answered HTTP 500 on /key/generate."
    assert error_of(admin.get(f"/users/{user_id}"), 404)["code"] == "no_such_user"
    assert litellm.keys_of(user_id) == []

    admin.post("/users", json={"id": user_id, "allowed_models": ["gpt-4o"]})
    [key] = litellm.keys_of(user_id)
    litellm.fail("/key/update", 500)
    assert error_of(admin.patch(f"/users/{user_id}", json={"allowed_models": ["gpt-4o-mini"]}), 502)
    assert admin.get(f"/users/{user_id}").json()["allowed_models"] == ["gpt-4o"]
    assert litellm.keys[key].models == ["gpt-4o"]

    before = admin.get(f"/users/{user_id}").json()
    litellm.fail("/key/delete", 503)
    assert error_of(admin.delete(f"/users/{user_id}"), 502)["code"] == "key_provisioning_failed"
    assert admin.get(f"/users/{user_id}").json() == before  # put back as it was
    assert litellm.keys_of(user_id) == [key]
    admin.delete(f"/users/{user_id}")


def test_a_wrong_master_key_is_named_never_shown(gateway_factory: Any, litellm: FakeLiteLLM) -> None:
    wrong = "sk-wrong-master-key-do-not-show-77d1"
    gw = gateway_factory(ADMIN_API_KEY=ADMIN_KEY, LITELLM_MASTER_KEY=wrong)
    admin = Admin(gw)
    try:
        user_id = new_user()
        error = error_of(admin.post("/users", json={"id": user_id}), 502)
        assert error["message"] == "LiteLLM refused LITELLM_MASTER_KEY (HTTP 401 on /key/generate)."
        assert error_of(admin.get(f"/users/{user_id}"), 404)
    finally:
        admin.close()
    gw.terminate()
    assert wrong not in gw.logs() and wrong[-4:] not in error["message"]


def test_the_cli_makes_rotates_and_deletes_keys(cli: Cli, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    added = cli.ok("users", "add", user_id, "--allowed-models", "gpt-4o")
    [key] = litellm.keys_of(user_id)
    assert added == f"added {user_id} with a new LiteLLM key ({mask_key(key)}){SOON}"
    assert litellm.keys[key].models == ["gpt-4o"]
    cli.ok("users", "set", user_id, "--all-models")
    assert litellm.keys[key].models == []
    assert cli.fails("users", "set", user_id, "--litellm-key", "sk-by-hand-0000", code=2) == (
        "Error: Invalid value for '--litellm-key': is managed by the gateway when LITELLM_MASTER_KEY is set: rotate it"
    )
    rotated = cli.ok("users", "rotate", user_id)
    [new_key] = litellm.keys_of(user_id)
    assert rotated == f"rotated {user_id}'s LiteLLM key (now {mask_key(new_key)}){SOON}"
    assert key in litellm.deleted
    assert f"litellm key:    {mask_key(new_key)}\n" in cli.ok("users", "show", user_id)
    cli.ok("users", "remove", user_id)
    assert litellm.keys_of(user_id) == [] and new_key in litellm.deleted


def test_no_key_is_left_without_its_user_when_the_database_refuses_the_user(cli: Cli, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    refuse(cli, "INSERT", user_id)
    assert cli.fails("users", "add", user_id) == "Error: database: refused by the test"
    [made] = litellm.made_for(user_id)
    assert litellm.keys_of(user_id) == [] and made in litellm.deleted  # the key made for them is gone again
    assert cli.fails("users", "show", user_id) == f"Error: no user {user_id}"


def test_a_refused_allow_list_puts_the_keys_models_back(cli: Cli, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    cli.ok("users", "add", user_id, "--allowed-models", "gpt-4o")
    [key] = litellm.keys_of(user_id)
    refuse(cli, "UPDATE", user_id)
    assert cli.fails("users", "set", user_id, "--allowed-models", "claude-3-5-sonnet") == (
        "Error: database: refused by the test"
    )
    assert litellm.keys[key].models == ["gpt-4o"]
    assert "allowed models: gpt-4o\n" in cli.ok("users", "show", user_id)


def test_a_removal_the_database_refuses_keeps_the_key(cli: Cli, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    cli.ok("users", "add", user_id)
    refuse(cli, "DELETE", user_id)
    assert cli.fails("users", "remove", user_id) == "Error: database: refused by the test"
    assert len(litellm.keys_of(user_id)) == 1
    cli.ok("users", "show", user_id)


def test_a_rotation_that_cannot_finish_keeps_the_old_key(cli: Cli, litellm: FakeLiteLLM) -> None:
    user_id = new_user()
    cli.ok("users", "add", user_id)
    [key] = litellm.keys_of(user_id)
    hint = f"litellm key:    {mask_key(key)}\n"

    litellm.fail("/key/generate", 500)
    assert cli.fails("users", "rotate", user_id) == "Error: LiteLLM answered HTTP 500 on /key/generate."
    litellm.fail("/key/delete", 500)  # the old key cannot be deleted: the new one is, and the old one kept
    assert cli.fails("users", "rotate", user_id) == "Error: LiteLLM answered HTTP 500 on /key/delete."
    assert litellm.keys_of(user_id) == [key] and hint in cli.ok("users", "show", user_id)

    refuse(cli, "UPDATE", user_id)  # the new key cannot be stored: it is deleted again
    assert cli.fails("users", "rotate", user_id) == "Error: database: refused by the test"
    assert litellm.keys_of(user_id) == [key] and hint in cli.ok("users", "show", user_id)
    assert len(litellm.made_for(user_id)) == 3  # the first, and two made and deleted again


def test_an_unreachable_litellm_adds_no_user(cli: Cli) -> None:
    user_id = new_user()
    down = f"http://127.0.0.1:{free_port()}"
    line = cli.fails("users", "add", user_id, LITELLM_BASE_URL=down)
    assert line == "Error: The upstream service could not be reached or broke the protocol."
    assert cli.fails("users", "show", user_id) == f"Error: no user {user_id}"


def test_rotation_needs_the_master_key(cli: Cli) -> None:
    user_id = new_user()
    cli.ok("users", "add", user_id, "--litellm-key", "sk-by-hand-0000", LITELLM_MASTER_KEY="")
    assert cli.fails("users", "rotate", user_id, LITELLM_MASTER_KEY="") == (
        "Error: Rotating a user's key needs LITELLM_MASTER_KEY."
    )


def test_usage_is_priced_with_litellms_token_prices(admin: Admin, gw: GatewayProcess) -> None:
    user_id = new_user()
    admin.post("/users", json={"id": user_id})
    agent = gw.client(user_id)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "claude-3-5-sonnet"):  # 11 prompt + 7 completion tokens each
        agent.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    agent.responses.create(model="gpt-4o", input="x")  # 13 prompt (2 of them cached) + 9 completion tokens
    run(wait_for_rows(gw.database_url, user_id, 4))
    month = datetime.now(UTC).strftime("%Y-%m")
    usage = admin.get("/usage", params={"user_id": user_id, "month": month}).json()

    costs = {model["model"]: model["estimated_cost"] for model in usage["models"]}
    mini = 2 * (11 * 1.5e-07 + 7 * 6e-07)
    four = 11 * 2.5e-06 + 2 * 1.25e-06 + 9 * 1e-05  # cached prompt tokens at the cache-read price
    assert costs == {"claude-3-5-sonnet": None, "gpt-4o": pytest.approx(four), "gpt-4o-mini": pytest.approx(mini)}
    assert usage["estimated_cost"] == pytest.approx(mini + four)
    assert usage["total_tokens"] == 3 * 18 + 22
    every = admin.get("/usage", params={"month": month}).json()
    assert [row["estimated_cost"] for row in every if row["user_id"] == user_id] == [usage["estimated_cost"]]
    assert SECRET not in str(usage)
