"""LiteLLM keys at rest: sealed in SQLite and PostgreSQL, the SQLite files its owner's alone, and a
rotation that leaves every user working. Through the real CLI and a real gateway process."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from agent_gateway.cli import main
from agent_gateway.stores.database import Database
from tests.conftest import SEAL_KEY, SECRET, USER_KEY_PREFIX, new_user, run, settings_variables
from tests.fakes.litellm import FakeLiteLLM

NEW_KEY = base64.urlsafe_b64encode(b"new-sealing-key-for-rotation-!!!").decode()  # another Fernet key, for rotation


def cli(database_url: str, *args: str, sealing: str | None = SEAL_KEY) -> Result:
    env: dict[str, str | None] = dict.fromkeys(settings_variables())
    env.update({"DATABASE_URL": database_url, "KEY_ENCRYPTION_KEY": sealing})
    return CliRunner().invoke(main, list(args), env=env)


async def stored_keys(database_url: str) -> dict[str, str]:
    database = Database(database_url)
    try:
        await database.start()
        async with database.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT id, litellm_key_id FROM user_profiles"))).all()
        return {str(user_id): key for user_id, key in rows}
    finally:
        await database.close()


def chat_as(gw: Any, user_id: str) -> str:
    completion = gw.client(user_id).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    return str(completion.choices[0].message.content)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    return str(request.getfixturevalue("postgres_url"))


def test_keys_are_sealed_at_rest_and_reach_litellm_whole(
    database_url: str, gateway_factory: Any, litellm: FakeLiteLLM
) -> None:
    user_id = new_user()
    key = USER_KEY_PREFIX + user_id
    assert cli(database_url, "users", "add", user_id, "--litellm-key", key).exit_code == 0

    stored = run(stored_keys(database_url))[user_id]
    assert stored.startswith("enc1:") and key not in stored
    gw = gateway_factory(DATABASE_URL=database_url)
    assert chat_as(gw, user_id) == "Hello!"
    assert litellm.for_user(user_id)[-1].headers["Authorization"] == f"Bearer {key}"


def test_rotation_reseals_every_key_and_no_user_notices(
    database_url: str, gateway_factory: Any, litellm: FakeLiteLLM
) -> None:
    plain, sealed = new_user(), new_user()
    assert (
        cli(database_url, "users", "add", plain, "--litellm-key", USER_KEY_PREFIX + plain, sealing=None).exit_code == 0
    )
    assert cli(database_url, "users", "add", sealed, "--litellm-key", USER_KEY_PREFIX + sealed).exit_code == 0
    before = run(stored_keys(database_url))
    assert before[plain] == USER_KEY_PREFIX + plain  # written before encryption was on

    rotated = cli(database_url, "keys", "rotate", sealing=f"{NEW_KEY},{SEAL_KEY}")
    assert (rotated.exit_code, rotated.stdout) == (0, "resealed 2 keys\n")
    assert cli(database_url, "keys", "rotate", sealing=f"{NEW_KEY},{SEAL_KEY}").stdout == "resealed 0 keys\n"
    after = run(stored_keys(database_url))
    assert all(value.startswith("enc1:") for value in after.values()) and after[sealed] != before[sealed]

    gw = gateway_factory(DATABASE_URL=database_url, KEY_ENCRYPTION_KEY=NEW_KEY)  # the old key dropped
    for user_id in (plain, sealed):
        assert chat_as(gw, user_id) == "Hello!"
        assert litellm.for_user(user_id)[-1].headers["Authorization"] == f"Bearer {USER_KEY_PREFIX}{user_id}"


def test_a_key_nobody_can_open_is_a_server_error_never_a_leak(tmp_path: Path, gateway_factory: Any) -> None:
    database_url = f"sqlite:///{tmp_path}/keys.db"
    user_id = new_user()
    assert cli(database_url, "users", "add", user_id, "--litellm-key", USER_KEY_PREFIX + user_id).exit_code == 0

    gw = gateway_factory(DATABASE_URL=database_url, KEY_ENCRYPTION_KEY=NEW_KEY)
    response = httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert USER_KEY_PREFIX not in response.text and "enc1:" not in response.text
    assert "enc1:" not in gw.logs() and SEAL_KEY not in gw.logs() and NEW_KEY not in gw.logs()

    listing = cli(database_url, "users", "list", sealing=NEW_KEY)
    assert listing.exit_code == 1
    assert listing.stderr.strip() == "Error: No key in KEY_ENCRYPTION_KEY opens a stored LiteLLM key."


def test_the_sqlite_files_are_readable_by_their_owner_alone(tmp_path: Path, gateway_factory: Any) -> None:
    old_umask = os.umask(0o022)  # the usual default: new files world-readable unless asked otherwise
    try:
        database = tmp_path / "var" / "gateway.db"
        gw = gateway_factory(DATABASE_URL=f"sqlite:///{database}")
        user_id = new_user()
        assert cli(gw.database_url, "users", "add", user_id, "--litellm-key", "sk-x").exit_code == 0
        assert chat_as(gw, user_id) == "Hello!"  # the server has the database open: WAL and SHM exist
        files = [database, database.with_name("gateway.db-wal"), database.with_name("gateway.db-shm")]
        assert all(file.exists() for file in files)
        assert {stat.S_IMODE(file.stat().st_mode) for file in files} == {0o600}
        assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700

        loose = tmp_path / "loose.db"  # one made by an older version, world-readable
        loose.touch(mode=0o644)
        assert cli(f"sqlite:///{loose}", "users", "list").exit_code == 0
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
