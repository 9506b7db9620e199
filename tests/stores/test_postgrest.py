"""The PostgREST profile source (SPEC §3, §4) against a PostgREST-faithful fake on the real PostgreSQL."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from agent_gateway.domain import Profile
from agent_gateway.stores.database import Database
from agent_gateway.stores.postgrest import (
    PostgrestProfileSource,
    PostgrestProfileStore,
    ProfileSourceError,
    auth_headers,
    is_jwt,
)
from agent_gateway.stores.profile_changes import ChangeLog
from agent_gateway.stores.profiles import ProfileSource
from agent_gateway.upstream.client import UpstreamClient
from tests.fakes.postgrest import LEGACY_JWT_KEY, SB_SECRET_KEY, FakePostgrest, running_postgrest

USER_KEY = "sk-litellm-user-0123456789"


class _AnyTime:
    """Equal to any `created_at` the table gave."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, datetime)


ANY_TIME: Any = _AnyTime()


def new_id() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePostgrest]:
    """One fake for the module, an `sb_secret_…` service key; tests use their own user ids."""
    with running_postgrest(service_key=SB_SECRET_KEY) as fake:
        yield fake


Supabase = Callable[[str], Awaitable[UpstreamClient]]


@pytest.fixture
async def supabase() -> AsyncIterator[Supabase]:
    """Supabase as the gateway reaches it, through the upstream boundary, at a URL of the test's choice."""
    clients: list[UpstreamClient] = []

    async def at(url: str) -> UpstreamClient:
        clients.append(UpstreamClient("supabase", url))
        await clients[-1].start()
        return clients[-1]

    yield at
    for client in clients:
        await client.close()


async def source_for(fake: FakePostgrest, supabase: Supabase, **options: Any) -> PostgrestProfileSource:
    return PostgrestProfileSource(await supabase(fake.url), options.pop("service_key", fake.service_key), **options)


async def test_found_user(fake: FakePostgrest, supabase: Supabase) -> None:
    user = new_id()
    created = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
    await fake.add_async(user, USER_KEY, ["gpt-4o", "gpt-4o-mini", "gpt-4o"], 250_000, created)
    source: ProfileSource = await source_for(fake, supabase)  # the protocol the profile cache takes

    profile = await source.get(user)

    assert profile == Profile(user, USER_KEY, frozenset({"gpt-4o", "gpt-4o-mini"}), 250_000, created)
    assert profile.allows("gpt-4o") and not profile.allows("claude-3-5-sonnet")


async def test_null_models_and_limit_mean_unrestricted(fake: FakePostgrest, supabase: Supabase) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)

    profile = await (await source_for(fake, supabase)).get(user)

    assert profile is not None
    assert profile.allowed_models is None and profile.monthly_limit is None
    assert profile.allows("anything")
    assert profile.created_at is not None and profile.created_at.tzinfo is not None  # the column's default, now()


async def test_empty_model_list_allows_nothing(fake: FakePostgrest, supabase: Supabase) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY, [])

    profile = await (await source_for(fake, supabase)).get(user)

    assert profile is not None and profile.allowed_models == frozenset()
    assert not profile.allows("gpt-4o")


async def test_unknown_user_is_none(fake: FakePostgrest, supabase: Supabase) -> None:
    assert await (await source_for(fake, supabase)).get(new_id()) is None
    assert fake.last().status == 200  # an empty array, not a 406: we never ask for a single object


async def test_removed_user_is_none(fake: FakePostgrest, supabase: Supabase) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)
    await fake.remove_async(user)

    assert await (await source_for(fake, supabase)).get(user) is None


async def test_query_is_postgrest_form(fake: FakePostgrest, supabase: Supabase) -> None:
    user = "Ab_9-" + uuid.uuid4().hex[:8]
    await (await source_for(fake, supabase)).get(user)

    seen = fake.last()
    assert seen.method == "GET" and seen.path == "/rest/v1/user_profiles"
    assert seen.query == {"id": [f"eq.{user}"], "select": ["*"]}
    assert seen.headers["Accept"] == "application/json"


async def test_litellm_key_column_variant(supabase: Supabase) -> None:
    user = new_id()
    with running_postgrest(key_column="litellm_key") as fake:
        await fake.add_async(user, USER_KEY, ["gpt-4o"], 10)

        profile = await (await source_for(fake, supabase)).get(user)

    assert profile == Profile(user, USER_KEY, frozenset({"gpt-4o"}), 10, profile.created_at if profile else None)


async def test_uuid_keyed_table(supabase: Supabase) -> None:
    """Supabase's user_profiles is often keyed by auth.users' UUIDs; a non-UUID id there is PostgREST's 400
    22P02, which means no such user, not an outage."""
    user = str(uuid.uuid4())
    with running_postgrest(id_type="uuid") as fake:
        await fake.add_async(user, USER_KEY)
        source = await source_for(fake, supabase)

        found = await source.get(user)
        not_a_uuid = await source.get("agent-7")
        status = fake.last().status

    assert found is not None and found.id == user and found.litellm_key == USER_KEY
    assert not_a_uuid is None
    assert status == 400


async def test_sb_secret_key_sends_only_apikey(fake: FakePostgrest, supabase: Supabase) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)

    assert await (await source_for(fake, supabase)).get(user) is not None

    headers = fake.last().headers
    assert headers["apikey"] == SB_SECRET_KEY
    assert "Authorization" not in headers  # not a JWT: PostgREST would answer 401 PGRST301


async def test_legacy_jwt_key_sends_apikey_and_bearer(supabase: Supabase) -> None:
    user = new_id()
    with running_postgrest(service_key=LEGACY_JWT_KEY) as fake:
        await fake.add_async(user, USER_KEY)

        profile = await (await source_for(fake, supabase)).get(user)
        headers = fake.last().headers

    assert profile is not None and profile.litellm_key == USER_KEY
    assert headers["apikey"] == LEGACY_JWT_KEY
    assert headers["Authorization"] == f"Bearer {LEGACY_JWT_KEY}"


def test_header_choice() -> None:
    assert is_jwt(LEGACY_JWT_KEY)
    assert not is_jwt(SB_SECRET_KEY)
    assert not is_jwt("sb_secret_a.b")  # dots alone do not make a JWT
    assert auth_headers(SB_SECRET_KEY) == {"apikey": SB_SECRET_KEY}
    assert auth_headers(LEGACY_JWT_KEY) == {"apikey": LEGACY_JWT_KEY, "Authorization": f"Bearer {LEGACY_JWT_KEY}"}


@pytest.mark.parametrize("wrong_key", ["sb_secret_WRONGWRONGWRONGWRONGWRONG1234", LEGACY_JWT_KEY])
async def test_bad_service_key_raises_without_the_key(fake: FakePostgrest, supabase: Supabase, wrong_key: str) -> None:
    source = await source_for(fake, supabase, service_key=wrong_key)

    with pytest.raises(ProfileSourceError) as caught:
        await source.get(new_id())

    assert caught.value.status == 401
    assert "Invalid API key" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(source)):
        assert wrong_key not in text and wrong_key[:16] not in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_server_down_raises(supabase: Supabase) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = PostgrestProfileSource(await supabase(f"http://127.0.0.1:{port}"), SB_SECRET_KEY)

    with pytest.raises(ProfileSourceError) as caught:
        await source.get(new_id())

    assert caught.value.status is None
    assert "unreachable" in str(caught.value) and SB_SECRET_KEY not in str(caught.value)
    # Not chained to aiohttp's exception, whose request_info holds the request headers (the key).
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_timeout_raises(supabase: Supabase) -> None:
    with running_postgrest() as fake:
        fake.delay = 2
        source = await source_for(fake, supabase, timeout=0.2)

        with pytest.raises(ProfileSourceError, match="did not answer in 0.2 s"):
            await source.get(new_id())


async def test_postgrest_error_raises_with_its_code(supabase: Supabase) -> None:
    with running_postgrest() as fake:
        fake.drop_table()

        with pytest.raises(ProfileSourceError) as caught:
            await (await source_for(fake, supabase)).get(new_id())

    assert caught.value.status == 404
    assert "PGRST205" in str(caught.value) and fake.service_key not in str(caught.value)


@pytest.fixture
async def change_log(tmp_path: Any) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/gateway.db")
    await database.start()
    yield database
    await database.close()


async def test_the_store_writes_users_through_postgrest_and_logs_each_change(
    fake: FakePostgrest, supabase: Supabase, change_log: Database
) -> None:
    store = PostgrestProfileStore(await supabase(fake.url), fake.service_key, change_log)
    first, second = sorted([new_id(), new_id()])
    before = await store.count()
    assert await store.add(Profile(first, USER_KEY, frozenset({"gpt-4o", "a"}), 1000))
    assert not await store.add(Profile(first, "sk-another", None, None))  # the id is taken
    assert await store.add(Profile(second, USER_KEY, None, None))
    assert await store.count() == before + 2
    assert await store.get(first) == Profile(first, USER_KEY, frozenset({"gpt-4o", "a"}), 1000, ANY_TIME)
    after_first = [p.id for p in await store.list(after=first)]  # other tests' users share the table
    assert second in after_first and first not in after_first and after_first == sorted(after_first)
    assert len(await store.list(limit=1)) == 1

    assert await store.update(first, allowed_models=None, monthly_limit=5)
    changed = await store.get(first)
    assert changed is not None and (changed.allowed_models, changed.monthly_limit) == (None, 5)
    assert not await store.update(new_id(), monthly_limit=5)
    assert await store.remove(second) and not await store.remove(second)
    assert await store.get(second) is None
    logged = await ChangeLog(change_log).since(0)
    assert [user for _, user in logged] == [first, second, first, second]  # every instance forgets these


async def test_the_older_key_column_and_a_uuid_keyed_table(supabase: Supabase, change_log: Database) -> None:
    with running_postgrest(key_column="litellm_key", id_type="uuid") as fake:
        store = PostgrestProfileStore(await supabase(fake.url), fake.service_key, change_log)
        user = str(uuid.uuid4())
        assert await store.add(Profile(user, USER_KEY, None, 10))
        found = await store.get(user)
        assert found is not None and found.litellm_key == USER_KEY
        assert await store.get("not-a-uuid") is None and not await store.remove("not-a-uuid")


async def test_a_write_while_postgrest_is_away_is_an_error_without_the_key(
    supabase: Supabase, change_log: Database
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgrestProfileStore(await supabase(f"http://127.0.0.1:{port}"), SB_SECRET_KEY, change_log)
    with pytest.raises(ProfileSourceError) as caught:
        await store.add(Profile(new_id(), USER_KEY, None, None))
    assert "unreachable" in str(caught.value) and SB_SECRET_KEY not in str(caught.value)
    assert await ChangeLog(change_log).since(0) == []
