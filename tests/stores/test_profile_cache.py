"""The profile cache (SPEC §5 step 3): TTLs, one load per user at a time, and invalidation over Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from agent_gateway.domain import Profile
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.profile_cache import ProfileCache
from agent_gateway.stores.profile_changes import Forgetting, listen_for_changes, publish_change
from agent_gateway.stores.profiles import ProfileStore

KEY = "sk-user-key-0123456789"


class CountingStore:
    """The real ProfileStore, counting its loads; with a gate, a load waits (after reading) until it opens."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self.loads = 0
        self.gate: asyncio.Event | None = None

    async def get(self, user_id: str) -> Profile | None:
        self.loads += 1
        profile = await self.store.get(user_id)
        if self.gate is not None:
            await self.gate.wait()
        return profile


@pytest.fixture
def store(database: Database) -> ProfileStore:
    return ProfileStore(database, KeyCipher())


@pytest.fixture
def source(store: ProfileStore) -> CountingStore:
    return CountingStore(store)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_a_profile_is_kept_for_the_positive_ttl(store: ProfileStore, source: CountingStore) -> None:
    cache = ProfileCache(source, positive_ttl=0.3, negative_ttl=10)
    await store.add(Profile("alice", KEY, monthly_limit=10))

    first = await cache.get("alice")
    await store.update("alice", monthly_limit=20)
    second = await cache.get("alice")
    assert first is not None and second is not None
    assert (first.monthly_limit, second.monthly_limit, source.loads) == (10, 10, 1)

    await asyncio.sleep(0.35)
    third = await cache.get("alice")
    assert third is not None
    assert (third.monthly_limit, source.loads) == (20, 2)


async def test_an_unknown_user_is_kept_for_the_negative_ttl(store: ProfileStore, source: CountingStore) -> None:
    cache = ProfileCache(source, positive_ttl=60, negative_ttl=0.2)
    assert await cache.get("alice") is None
    await store.add(Profile("alice", KEY))
    assert await cache.get("alice") is None
    assert source.loads == 1

    await asyncio.sleep(0.25)
    assert await cache.get("alice") is not None
    assert source.loads == 2
    assert await cache.get("alice") is not None  # now a positive entry, for the long TTL
    assert source.loads == 2


async def test_concurrent_gets_for_one_user_load_once(store: ProfileStore, source: CountingStore) -> None:
    await store.add(Profile("alice", KEY))
    await store.add(Profile("bob", KEY))
    cache = ProfileCache(source)
    source.gate = asyncio.Event()
    gets = [asyncio.create_task(cache.get(user)) for user in ["alice"] * 50 + ["bob"] * 50]
    await eventually(lambda: asyncio.sleep(0, source.loads == 2))
    source.gate.set()
    profiles = await asyncio.gather(*gets)
    assert [p.id if p else None for p in profiles] == ["alice"] * 50 + ["bob"] * 50
    assert source.loads == 2  # one per user, not one per request
    assert await cache.get("alice") is profiles[0]
    assert source.loads == 2


async def test_a_failed_load_fails_its_waiters_and_is_not_cached(
    database: Database, store: ProfileStore, source: CountingStore
) -> None:
    cache = ProfileCache(source)
    async with database.begin() as conn:
        await conn.execute(sa.text("DROP TABLE user_profiles"))
    results = await asyncio.gather(*(cache.get("alice") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, sa.exc.DBAPIError) for result in results)
    assert source.loads == 1

    await database.start()  # the table is back
    await store.add(Profile("alice", KEY))
    assert await cache.get("alice") is not None
    assert source.loads == 2


async def test_invalidate_drops_one_user(store: ProfileStore, source: CountingStore) -> None:
    await store.add(Profile("alice", KEY, monthly_limit=10))
    await store.add(Profile("bob", KEY))
    cache = ProfileCache(source)
    await cache.get("alice")
    await cache.get("bob")

    await store.update("alice", monthly_limit=20)
    cache.invalidate("alice")
    cache.invalidate("nobody")  # unknown ids are fine
    alice = await cache.get("alice")
    assert alice is not None
    assert alice.monthly_limit == 20
    await cache.get("bob")
    assert source.loads == 3

    cache.clear()
    await cache.get("bob")
    assert source.loads == 4


async def test_a_load_that_raced_an_invalidation_is_not_cached(store: ProfileStore, source: CountingStore) -> None:
    """A load that read the old row before the change must not keep it for the TTL."""
    await store.add(Profile("alice", KEY, monthly_limit=10))
    cache = ProfileCache(source)
    source.gate = asyncio.Event()
    racing = asyncio.create_task(cache.get("alice"))
    await eventually(lambda: asyncio.sleep(0, source.loads == 1))
    await asyncio.sleep(0.05)  # the old row is read; the load now waits at the gate

    await store.update("alice", monthly_limit=20)
    cache.invalidate("alice")
    source.gate.set()
    old = await racing
    assert old is not None
    assert old.monthly_limit == 10  # that caller asked before the change

    fresh = await cache.get("alice")
    assert fresh is not None
    assert fresh.monthly_limit == 20
    assert source.loads == 2


async def test_a_published_change_evicts_the_profile(store: ProfileStore, source: CountingStore, redis: Redis) -> None:
    alice, bob = f"u-{uuid.uuid4().hex[:12]}", f"u-{uuid.uuid4().hex[:12]}"
    await store.add(Profile(alice, KEY, monthly_limit=10))
    await store.add(Profile(bob, KEY))
    cache = ProfileCache(source)
    await cache.get(alice)
    listener = asyncio.create_task(listen_for_changes(redis, Forgetting((cache.invalidate,), cache.clear)))
    try:
        # Subscribed: the listener starts from an empty cache (changes made before it listened are unknown).
        await eventually(lambda: loads_on_get(cache, source, alice))
        await cache.get(bob)
        loads = source.loads

        await store.update(alice, monthly_limit=20)
        await publish_change(redis, alice)
        await eventually(lambda: loads_on_get(cache, source, alice))
        profile = await cache.get(alice)
        assert profile is not None
        assert profile.monthly_limit == 20
        # Once, or twice when the poll's own load raced the eviction on a busy machine.
        assert loads < source.loads <= loads + 2
        after = source.loads

        await cache.get(bob)  # another user's entry stays
        assert source.loads == after
    finally:
        await stop(listener)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about Redis, not the database
async def test_the_listener_survives_a_lost_connection(
    store: ProfileStore, source: CountingStore, redis_url: str, redis: Redis
) -> None:
    name = f"gw-test-{uuid.uuid4().hex[:12]}"
    listening = Redis.from_url(redis_url, client_name=name)
    alice = f"u-{uuid.uuid4().hex[:12]}"
    await store.add(Profile(alice, KEY))
    cache = ProfileCache(source)
    listener = asyncio.create_task(listen_for_changes(listening, Forgetting((cache.invalidate,), cache.clear)))
    try:
        await eventually(lambda: loads_on_get(cache, source, alice))
        killed = [client["id"] for client in await redis.client_list() if client["name"] == name]
        assert killed
        for client_id in killed:
            await redis.client_kill_filter(_id=client_id)

        # Subscribed again: changes published while the connection was down are unknown, so the cache is emptied.
        await eventually(lambda: loads_on_get(cache, source, alice))
        await publish_change(redis, alice)
        await eventually(lambda: loads_on_get(cache, source, alice))
    finally:
        await stop(listener)
        await listening.aclose()


async def stop(listener: asyncio.Task[None]) -> None:
    listener.cancel()
    await asyncio.wait([listener], timeout=5)
    assert listener.cancelled(), "the listener did not end when cancelled"


async def loads_on_get(cache: ProfileCache, source: CountingStore, user_id: str) -> bool:
    """True when `user_id` was not in the cache: getting it made a load."""
    before = source.loads
    await cache.get(user_id)
    return source.loads > before
