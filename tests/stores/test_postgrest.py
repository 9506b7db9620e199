"""The PostgREST profile source (SPEC §3, §4) against a PostgREST-faithful fake on the real PostgreSQL."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from agent_gateway.stores.postgrest import PostgrestProfileSource, ProfileSourceError, auth_headers, is_jwt
from agent_gateway.stores.profiles import Profile, ProfileSource
from tests.fakes.postgrest import LEGACY_JWT_KEY, SB_SECRET_KEY, FakePostgrest, running_postgrest

USER_KEY = "sk-litellm-user-0123456789"


def new_id() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePostgrest]:
    """One fake for the module, an `sb_secret_…` service key; tests use their own user ids."""
    with running_postgrest(service_key=SB_SECRET_KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def source_for(fake: FakePostgrest, session: aiohttp.ClientSession, **options: Any) -> PostgrestProfileSource:
    return PostgrestProfileSource(fake.url, options.pop("service_key", fake.service_key), session, **options)


async def test_found_user(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    created = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
    await fake.add_async(user, USER_KEY, ["gpt-4o", "gpt-4o-mini", "gpt-4o"], 250_000, created)
    source: ProfileSource = source_for(fake, session)  # the protocol the profile cache takes

    profile = await source.get(user)

    assert profile == Profile(user, USER_KEY, frozenset({"gpt-4o", "gpt-4o-mini"}), 250_000, created)
    assert profile.allows("gpt-4o") and not profile.allows("claude-3-5-sonnet")


async def test_null_models_and_limit_mean_unrestricted(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)

    profile = await source_for(fake, session).get(user)

    assert profile is not None
    assert profile.allowed_models is None and profile.monthly_limit is None
    assert profile.allows("anything")
    assert profile.created_at is not None and profile.created_at.tzinfo is not None  # the column's default, now()


async def test_empty_model_list_allows_nothing(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY, [])

    profile = await source_for(fake, session).get(user)

    assert profile is not None and profile.allowed_models == frozenset()
    assert not profile.allows("gpt-4o")


async def test_unknown_user_is_none(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    assert await source_for(fake, session).get(new_id()) is None
    assert fake.last().status == 200  # an empty array, not a 406: we never ask for a single object


async def test_removed_user_is_none(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)
    await fake.remove_async(user)

    assert await source_for(fake, session).get(user) is None


async def test_query_is_postgrest_form(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = "Ab_9-" + uuid.uuid4().hex[:8]
    await source_for(fake, session).get(user)

    seen = fake.last()
    assert seen.method == "GET" and seen.path == "/rest/v1/user_profiles"
    assert seen.query == {"id": [f"eq.{user}"], "select": ["*"]}
    assert seen.headers["Accept"] == "application/json"


async def test_litellm_key_column_variant(session: aiohttp.ClientSession) -> None:
    user = new_id()
    with running_postgrest(key_column="litellm_key") as fake:
        await fake.add_async(user, USER_KEY, ["gpt-4o"], 10)

        profile = await source_for(fake, session).get(user)

    assert profile == Profile(user, USER_KEY, frozenset({"gpt-4o"}), 10, profile.created_at if profile else None)


async def test_uuid_keyed_table(session: aiohttp.ClientSession) -> None:
    """Supabase's user_profiles is often keyed by auth.users' UUIDs; a non-UUID id there is PostgREST's 400
    22P02, which means no such user, not an outage."""
    user = str(uuid.uuid4())
    with running_postgrest(id_type="uuid") as fake:
        await fake.add_async(user, USER_KEY)
        source = source_for(fake, session)

        found = await source.get(user)
        not_a_uuid = await source.get("agent-7")
        status = fake.last().status

    assert found is not None and found.id == user and found.litellm_key == USER_KEY
    assert not_a_uuid is None
    assert status == 400


async def test_sb_secret_key_sends_only_apikey(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)

    assert await source_for(fake, session).get(user) is not None

    headers = fake.last().headers
    assert headers["apikey"] == SB_SECRET_KEY
    assert "Authorization" not in headers  # not a JWT: PostgREST would answer 401 PGRST301


async def test_legacy_jwt_key_sends_apikey_and_bearer(session: aiohttp.ClientSession) -> None:
    user = new_id()
    with running_postgrest(service_key=LEGACY_JWT_KEY) as fake:
        await fake.add_async(user, USER_KEY)

        profile = await source_for(fake, session).get(user)
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
async def test_bad_service_key_raises_without_the_key(
    fake: FakePostgrest, session: aiohttp.ClientSession, wrong_key: str
) -> None:
    source = source_for(fake, session, service_key=wrong_key)

    with pytest.raises(ProfileSourceError) as caught:
        await source.get(new_id())

    assert caught.value.status == 401
    assert "Invalid API key" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(source)):
        assert wrong_key not in text and wrong_key[:16] not in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_server_down_raises(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = PostgrestProfileSource(f"http://127.0.0.1:{port}", SB_SECRET_KEY, session)

    with pytest.raises(ProfileSourceError) as caught:
        await source.get(new_id())

    assert caught.value.status is None
    assert "unreachable" in str(caught.value) and SB_SECRET_KEY not in str(caught.value)
    # Not chained to aiohttp's exception, whose request_info holds the request headers (the key).
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_timeout_raises(session: aiohttp.ClientSession) -> None:
    with running_postgrest() as fake:
        fake.delay = 2
        source = source_for(fake, session, timeout=0.2)

        with pytest.raises(ProfileSourceError, match="did not answer in 0.2 s"):
            await source.get(new_id())


async def test_postgrest_error_raises_with_its_code(session: aiohttp.ClientSession) -> None:
    with running_postgrest() as fake:
        fake.drop_table()

        with pytest.raises(ProfileSourceError) as caught:
            await source_for(fake, session).get(new_id())

    assert caught.value.status == 404
    assert "PGRST205" in str(caught.value) and fake.service_key not in str(caught.value)


# The fake itself answers as PostgREST does: these pin the behaviour the source relies on.


async def fetch(
    fake: FakePostgrest, session: aiohttp.ClientSession, query: str, **headers: str
) -> tuple[int, str, Any]:
    headers = {"apikey": fake.service_key, **headers}
    async with session.get(f"{fake.url}/rest/v1/user_profiles?{query}", headers=headers) as response:
        return response.status, response.content_type, await response.json(content_type=None)


async def test_fake_refuses_sb_secret_as_bearer(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    status, _, body = await fetch(fake, session, "select=id", Authorization=f"Bearer {fake.service_key}")

    assert status == 401
    assert body == {"code": "PGRST301", "details": None, "hint": None, "message": "Expected 3 parts in JWT; got 1"}


async def test_fake_key_checks(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{fake.url}/rest/v1/user_profiles?select=id") as response:
        assert response.status == 401
        assert (await response.json())["message"] == "No API key found in request"
    status, _, body = await fetch(fake, session, "select=id", apikey="sb_secret_nope")
    assert status == 401 and body["message"] == "Invalid API key"


async def test_fake_select_filters_and_types(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    first, second = new_id(), new_id()
    await fake.add_async(first, "k1", ["m1", "m2"], 7, datetime(2025, 3, 1, 8, 30, tzinfo=UTC))
    await fake.add_async(second, "k2")

    status, content_type, rows = await fetch(
        fake,
        session,
        f"id=in.({second},{first})&select=id,key:litellm_key_id,allowed_models,monthly_limit,created_at&order=id",
    )

    assert status == 200 and content_type == "application/json"
    expected = [
        {
            "id": first,
            "key": "k1",
            "allowed_models": ["m1", "m2"],
            "monthly_limit": 7,
            "created_at": "2025-03-01T08:30:00+00:00",
        },
        {"id": second, "key": "k2", "allowed_models": None, "monthly_limit": None},
    ]
    assert [row["id"] for row in rows] == sorted([first, second])
    by_id = {row["id"]: row for row in rows}
    assert by_id[first] == expected[0]
    assert {k: v for k, v in by_id[second].items() if k != "created_at"} == expected[1]

    status, _, rows = await fetch(
        fake, session, f"id=eq.{first}&monthly_limit=gte.7&allowed_models=not.is.null&select=id"
    )
    assert (status, rows) == (200, [{"id": first}])


async def test_fake_single_object(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    user = new_id()
    await fake.add_async(user, USER_KEY)
    accept = "application/vnd.pgrst.object+json"

    status, content_type, body = await fetch(fake, session, f"id=eq.{user}&select=id", Accept=accept)
    assert (status, content_type, body) == (200, accept, {"id": user})

    status, _, body = await fetch(fake, session, f"id=eq.{new_id()}&select=id", Accept=accept)
    assert status == 406
    assert body == {
        "code": "PGRST116",
        "details": "The result contains 0 rows",
        "hint": None,
        "message": "Cannot coerce the result to a single JSON object",
    }


async def test_fake_errors_in_postgrest_shape(fake: FakePostgrest, session: aiohttp.ClientSession) -> None:
    status, _, body = await fetch(fake, session, "select=id,nope")
    assert status == 400
    assert body == {
        "code": "42703",
        "details": None,
        "hint": None,
        "message": "column user_profiles.nope does not exist",
    }

    status, _, body = await fetch(fake, session, "nope=eq.1")
    assert (status, body["code"]) == (400, "42703")

    status, _, body = await fetch(fake, session, "monthly_limit=eq.lots")
    assert (status, body["code"]) == (400, "22P02")
    assert body["message"] == 'invalid input syntax for type bigint: "lots"'

    status, _, body = await fetch(fake, session, "id=approx.1")
    assert (status, body["code"]) == (400, "PGRST100")
    assert set(body) == {"code", "details", "hint", "message"}
