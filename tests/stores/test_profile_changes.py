"""Changes to a user reach every running gateway: within a poll of the change log without Redis
(within 1 s), at once with it (stores/profile_changes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agent_gateway.domain import Profile
from agent_gateway.stores.database import Database, profile_changes
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.profile_changes import KEEP, ChangeLog, Forgetting, follow_changes
from agent_gateway.stores.profiles import ProfileStore
from agent_gateway.stores.token_versions import TokenVersions
from tests.conftest import SEAL_KEY, SECRET, Cli, GatewayProcess, add_profile, new_user, run

KEY = "sk-user-key-0123456789"
NOW = ": takes effect now on every instance (Redis)\n"
SOON = ": takes effect within 1 s on every instance\n"


class Forgotten:
    """What a poller told its instance to forget."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.everything = 0

    def forgetting(self) -> Forgetting:
        return Forgetting((self.users.append,), self._all)

    def _all(self) -> None:
        self.everything += 1


async def test_every_write_is_logged_and_a_poller_forgets_each_user(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    forgotten = Forgotten()
    poller = asyncio.create_task(follow_changes(ChangeLog(database), forgotten.forgetting(), 0.05))
    try:
        await wait_until(lambda: forgotten.everything == 1)  # started: nothing cached is trusted
        await store.add(Profile("alice", KEY))
        await store.update("alice", monthly_limit=5)
        await store.update("nobody", monthly_limit=5)  # no such user: nothing changed, nothing logged
        await store.remove("alice")
        await TokenVersions(database).revoke("bob")
        await wait_until(lambda: len(forgotten.users) == 4)
        assert forgotten.users == ["alice", "alice", "alice", "bob"]
        assert forgotten.everything == 1
    finally:
        poller.cancel()


async def test_old_changes_are_pruned(database: Database) -> None:
    async with database.begin() as conn:
        old = datetime.now(UTC) - KEEP - timedelta(minutes=1)
        await conn.execute(sa.insert(profile_changes).values(user_id="old", changed_at=old))
    await ProfileStore(database, KeyCipher()).add(Profile("alice", KEY))
    assert [user for _, user in await ChangeLog(database).since(0)] == ["alice"]


async def test_a_poller_that_could_not_read_forgets_everything_when_it_can_again(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/gw.db")
    await database.start()
    forgotten = Forgotten()
    poller = asyncio.create_task(follow_changes(ChangeLog(database), forgotten.forgetting(), 0.05))
    try:
        await wait_until(lambda: forgotten.everything == 1)
        async with database.begin() as conn:  # the log unreadable for a while, as in an outage
            await conn.execute(sa.text("ALTER TABLE profile_changes RENAME TO away"))
        await asyncio.sleep(0.2)
        async with database.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE away RENAME TO profile_changes"))
        await wait_until(lambda: forgotten.everything == 2)
    finally:
        poller.cancel()
        await database.close()


def test_without_redis_a_change_reaches_a_running_gateway_within_1_s(
    gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gw = gateway_factory()
    cli = Cli(DATABASE_URL=gw.database_url, KEY_ENCRYPTION_KEY=SEAL_KEY)
    user_id = new_user()
    assert status(gw, user_id) == 403  # unknown: remembered as unknown for 5 s
    assert cli.ok("users", "add", user_id, "--litellm-key", KEY) == f"added {user_id}{SOON}"
    assert answered_within(1.0, lambda: status(gw, user_id) == 200)
    assert "gpt-4o-mini" in models(gw, user_id)  # the list is cached for a minute

    assert cli.ok("users", "set", user_id, "--allowed-models", "gpt-4o") == f"updated {user_id}{SOON}"
    assert answered_within(1.0, lambda: status(gw, user_id, "gpt-4o-mini") == 403)
    assert status(gw, user_id, "gpt-4o") == 200
    assert models(gw, user_id) == ["gpt-4o"]

    assert cli.ok("users", "remove", user_id) == f"removed {user_id}{SOON}"
    assert answered_within(1.0, lambda: status(gw, user_id, "gpt-4o") == 403)


def test_with_redis_a_change_reaches_every_gateway_at_once(
    gateway_factory: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Two instances on one database, polling the log only every 30 s: what reaches them is Redis.
    one = gateway_factory(REDIS_URL=redis_url, PROFILE_POLL_SECONDS="30")
    two = gateway_factory(REDIS_URL=redis_url, PROFILE_POLL_SECONDS="30", DATABASE_URL=one.database_url)
    cli = Cli(DATABASE_URL=one.database_url, KEY_ENCRYPTION_KEY=SEAL_KEY, REDIS_URL=redis_url)
    user_id = new_user()
    run(add_profile(one.database_url, user_id))
    assert [status(gw, user_id) for gw in (one, two)] == [200, 200]  # cached for 60 s

    assert cli.ok("users", "set", user_id, "--allowed-models", "gpt-4o") == f"updated {user_id}{NOW}"
    assert answered_within(0.25, lambda: [status(gw, user_id) for gw in (one, two)] == [403, 403])
    assert cli.ok("users", "remove", user_id) == f"removed {user_id}{NOW}"
    assert answered_within(0.25, lambda: [status(gw, user_id, "gpt-4o") for gw in (one, two)] == [403, 403])


def status(gw: GatewayProcess, user_id: str, model: str = "gpt-4o-mini") -> int:
    response = httpx.post(
        f"{gw.agent_base(user_id)}/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    return response.status_code


def models(gw: GatewayProcess, user_id: str) -> list[str]:
    response = httpx.get(f"{gw.agent_base(user_id)}/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    return [model["id"] for model in response.json()["data"]]


def answered_within(seconds: float, check: Callable[[], bool]) -> bool:
    """True when `check` held within `seconds` (checked every 20 ms, from now)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)
