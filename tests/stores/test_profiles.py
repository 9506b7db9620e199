"""User profiles in the gateway's own database (SPEC §4), the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent_gateway.domain import Profile, mask_key, parse_models
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.profiles import ProfileStore

KEY = "sk-user-key-0123456789"


async def table_names(database: Database) -> set[str]:
    async with database.connect() as conn:
        return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def column_names(database: Database, table: str) -> set[str]:
    async with database.connect() as conn:
        columns = await conn.run_sync(lambda sync: sa.inspect(sync).get_columns(table))
    return {column["name"] for column in columns}


async def raw_rows(database: Database, sql: str) -> list[dict[str, Any]]:
    async with database.connect() as conn:
        return [dict(row) for row in (await conn.execute(sa.text(sql))).mappings().all()]


async def create_beforehand(database: Database, *statements: str) -> None:
    """Make a table the way the platform did, before the gateway first starts on this database."""
    async with database.begin() as conn:
        if database.schema:
            await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{database.schema}"'))
        for statement in statements:
            await conn.execute(sa.text(statement))


async def test_schema_is_created_on_first_start(database_url: str) -> None:
    database = Database(database_url)
    try:
        await database.start()
        assert {"user_profiles", "usage_ledger"} <= await table_names(database)
        assert await column_names(database, "user_profiles") == {
            "id",
            "litellm_key_id",
            "allowed_models",
            "monthly_limit",
            "created_at",
        }
        assert database.key_column == "litellm_key_id"
        assert await ProfileStore(database, KeyCipher()).add(Profile("alice", KEY))
    finally:
        await database.close()

    restarted = Database(database_url)  # a second start finds the schema and keeps the data
    try:
        await restarted.start()
        profile = await ProfileStore(restarted, KeyCipher()).get("alice")
        assert profile is not None
        assert profile.litellm_key == KEY
    finally:
        await restarted.close()


async def test_add_get_list_remove(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    assert await store.get("alice") is None
    assert await store.list() == []

    assert await store.add(Profile("bob", "sk-bob-key-000000001", frozenset({"gpt-4o"}), 5000))
    assert await store.add(Profile("alice", KEY))

    alice = await store.get("alice")
    assert alice is not None
    assert (alice.id, alice.litellm_key, alice.allowed_models, alice.monthly_limit) == ("alice", KEY, None, None)
    assert alice.created_at is not None
    assert [profile.id for profile in await store.list()] == ["alice", "bob"]

    assert await store.remove("alice")
    assert await store.get("alice") is None
    assert not await store.remove("alice")
    assert [profile.id for profile in await store.list()] == ["bob"]


async def test_add_refuses_a_taken_id(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    assert await store.add(Profile("alice", KEY))
    assert not await store.add(Profile("alice", "sk-another-key-999999"))
    alice = await store.get("alice")
    assert alice is not None
    assert alice.litellm_key == KEY


async def test_concurrent_adds_of_one_id_make_one_profile(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    results = await asyncio.gather(*(store.add(Profile("alice", f"sk-key-{n:016d}")) for n in range(4)))
    assert sorted(results) == [False, False, False, True]
    assert [profile.id for profile in await store.list()] == ["alice"]


async def test_update_changes_only_what_is_named(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    await store.add(Profile("alice", KEY, frozenset({"gpt-4o"}), 1000))

    assert await store.update("alice", litellm_key="sk-rotated-key-000001")
    alice = await store.get("alice")
    assert alice is not None
    assert (alice.litellm_key, alice.allowed_models, alice.monthly_limit) == (
        "sk-rotated-key-000001",
        frozenset({"gpt-4o"}),
        1000,
    )

    assert await store.update("alice", monthly_limit=None)
    assert await store.update("alice", allowed_models=frozenset({"claude-3-5-sonnet", "gpt-4o-mini"}))
    alice = await store.get("alice")
    assert alice is not None
    assert (alice.litellm_key, alice.allowed_models, alice.monthly_limit) == (
        "sk-rotated-key-000001",
        frozenset({"claude-3-5-sonnet", "gpt-4o-mini"}),
        None,
    )

    assert await store.update("alice", monthly_limit=10**12)  # tokens per month: more than 32 bits
    alice = await store.get("alice")
    assert alice is not None
    assert alice.monthly_limit == 10**12


async def test_update_of_unknown_user_is_false(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    assert not await store.update("nobody", monthly_limit=5)
    assert await store.list() == []


async def test_update_with_nothing_to_change(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    await store.add(Profile("alice", KEY))
    assert await store.update("alice")
    assert not await store.update("nobody")


async def test_allowed_models_none_means_all_and_a_set_is_kept(database: Database) -> None:
    store = ProfileStore(database, KeyCipher())
    await store.add(Profile("everything", KEY))
    await store.add(Profile("some", KEY, frozenset({"gpt-4o", "claude"})))
    await store.add(Profile("nothing", KEY, frozenset()))

    everything, some, nothing = [await store.get(user) for user in ("everything", "some", "nothing")]
    assert everything is not None and some is not None and nothing is not None
    assert everything.allowed_models is None
    assert everything.allows("any-model")
    assert some.allowed_models == frozenset({"gpt-4o", "claude"})
    assert some.allows("claude") and not some.allows("gpt-4o-mini")
    assert nothing.allowed_models == frozenset()
    assert not nothing.allows("gpt-4o")

    assert await store.update("some", allowed_models=None)
    some = await store.get("some")
    assert some is not None
    assert some.allowed_models is None


LEGACY_SQLITE = """CREATE TABLE user_profiles (
    id TEXT PRIMARY KEY,
    litellm_key TEXT NOT NULL,
    allowed_models TEXT,
    monthly_limit INTEGER,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""
LEGACY_POSTGRES = """CREATE TABLE user_profiles (
    id text PRIMARY KEY,
    litellm_key text NOT NULL,
    allowed_models text[],
    monthly_limit bigint,
    created_at timestamptz DEFAULT now()
)"""


async def test_existing_table_with_litellm_key_column_is_adopted(database_url: str) -> None:
    database = Database(database_url)
    postgres = database.dialect == "postgresql"
    models = "ARRAY['gpt-4o','claude']" if postgres else """'["gpt-4o","claude"]'"""
    try:
        await create_beforehand(
            database,
            LEGACY_POSTGRES if postgres else LEGACY_SQLITE,
            "INSERT INTO user_profiles (id, litellm_key, allowed_models, monthly_limit)"
            f" VALUES ('legacy', 'sk-legacy-key-00001', {models}, 1000)",
        )
        await database.start()
        assert database.key_column == "litellm_key"
        assert "litellm_key_id" not in await column_names(database, "user_profiles")
        store = ProfileStore(database, KeyCipher())

        legacy = await store.get("legacy")
        assert legacy is not None
        assert legacy.litellm_key == "sk-legacy-key-00001"
        assert legacy.allowed_models == frozenset({"gpt-4o", "claude"})
        assert legacy.monthly_limit == 1000

        assert await store.add(Profile("alice", KEY, frozenset({"gpt-4o-mini"}), 50))
        assert await store.update("legacy", litellm_key="sk-legacy-rotated-1", allowed_models=None)
        assert [profile.id for profile in await store.list()] == ["alice", "legacy"]
        legacy = await store.get("legacy")
        assert legacy is not None
        assert (legacy.litellm_key, legacy.allowed_models) == ("sk-legacy-rotated-1", None)

        rows = await raw_rows(database, "SELECT id, litellm_key, allowed_models FROM user_profiles ORDER BY id")
        # written in the table's own column and its own list type: text[] on Postgres, JSON text on SQLite
        assert rows[0] == {
            "id": "alice",
            "litellm_key": KEY,
            "allowed_models": ["gpt-4o-mini"] if postgres else '["gpt-4o-mini"]',
        }
        assert rows[1]["litellm_key"] == "sk-legacy-rotated-1"

        assert await store.remove("legacy")
        assert await store.get("legacy") is None
    finally:
        await database.close()


async def test_existing_sqlite_table_with_comma_separated_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/legacy.db")
    try:
        await create_beforehand(
            database,
            LEGACY_SQLITE,
            "INSERT INTO user_profiles (id, litellm_key, allowed_models) VALUES ('legacy', 'sk-k', 'gpt-4o,claude')",
        )
        await database.start()
        legacy = await ProfileStore(database, KeyCipher()).get("legacy")
        assert legacy is not None
        assert legacy.allowed_models == frozenset({"gpt-4o", "claude"})
    finally:
        await database.close()


async def test_existing_postgres_table_keyed_by_uuid(postgres_url: str) -> None:
    """Supabase's `user_profiles.id` is a UUID: other ids are simply not there, never a database error."""
    database = Database(postgres_url)
    user = str(uuid.uuid4())
    try:
        await create_beforehand(database, LEGACY_POSTGRES.replace("id text PRIMARY KEY", "id uuid PRIMARY KEY"))
        await database.start()
        store = ProfileStore(database, KeyCipher())
        assert await store.add(Profile(user, KEY, frozenset({"gpt-4o"})))

        profile = await store.get(user)
        assert profile is not None
        assert (profile.id, profile.litellm_key) == (user, KEY)
        assert [profile.id for profile in await store.list()] == [user]

        assert await store.get("alice") is None
        assert not await store.update("alice", monthly_limit=5)
        assert not await store.remove("alice")
        assert await store.update(user, monthly_limit=5)
        assert await store.remove(user)
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("key", "masked"),
    [("sk-1234567890abcdef", "sk-…cdef"), ("short", "****"), ("12345678", "****"), ("", "****")],
)
def test_mask_key(key: str, masked: str) -> None:
    assert mask_key(key) == masked


def test_profile_repr_never_shows_the_key() -> None:
    profile = Profile("alice", "sk-1234567890abcdef", frozenset({"gpt-4o"}), 10)
    assert "1234567890" not in repr(profile)
    assert "1234567890" not in str(profile)
    assert "alice" in repr(profile)


@pytest.mark.parametrize(
    ("value", "models"),
    [
        (None, None),
        ([], frozenset()),
        (["a", "b"], frozenset({"a", "b"})),
        ('["a", "b"]', frozenset({"a", "b"})),
        ("a,b,", frozenset({"a", "b"})),
    ],
)
def test_parse_models(value: Any, models: frozenset[str] | None) -> None:
    assert parse_models(value) == models
