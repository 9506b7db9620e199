"""Profile cache: positive answers for 60 s, unknown users for 5 s (SPEC §5 step 3).

Without Redis the TTL bounds how long a changed or removed user keeps the old profile. With
Redis, every instance subscribes to one channel and the CLI publishes each change on it, so a
change applies at once everywhere. Keys stay out of Redis: only user ids travel there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from agent_gateway.domain import Profile
from agent_gateway.ops.metrics import MODEL_LABELS
from agent_gateway.stores.profiles import ProfileSource

INVALIDATION_CHANNEL = "agent-gateway:profile-changed"
MAX_ENTRIES = 100_000
log = logging.getLogger("agent_gateway.profiles")


class ProfileCache:
    def __init__(self, source: ProfileSource, positive_ttl: float = 60.0, negative_ttl: float = 5.0) -> None:
        self.source = source
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self._entries: dict[str, tuple[float, Profile | None]] = {}
        self._loading: dict[str, asyncio.Future[Profile | None]] = {}
        self._epoch = 0  # bumped by every invalidation: a load that raced one is answered, not cached

    async def get(self, user_id: str) -> Profile | None:
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        # One load per user at a time: a burst after expiry makes one query, not hundreds.
        if (pending := self._loading.get(user_id)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Profile | None] = asyncio.get_running_loop().create_future()
        self._loading[user_id] = future
        epoch = self._epoch
        try:
            profile = await self.source.get(user_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(profile)
            if self._epoch == epoch:
                self._store(user_id, profile)
            return profile
        finally:
            if self._loading.get(user_id) is future:
                del self._loading[user_id]

    def _store(self, user_id: str, profile: Profile | None) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        if profile is not None:
            MODEL_LABELS.learn(profile.allowed_models)
        ttl = self.positive_ttl if profile is not None else self.negative_ttl
        self._entries[user_id] = (time.monotonic() + ttl, profile)

    def invalidate(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
        self._loading.pop(user_id, None)  # later gets load afresh instead of joining a load that read the old row
        self._epoch += 1

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
        self._epoch += 1


async def publish_change(redis: Redis, user_id: str) -> None:
    await redis.publish(INVALIDATION_CHANNEL, user_id)


async def listen_for_changes(redis: Redis, cache: ProfileCache, forget: Sequence[Callable[[str], None]] = ()) -> None:
    """Evict profiles (and whatever else `forget` names, per user) as the CLI changes them;
    reconnects until cancelled."""
    task = asyncio.current_task()
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if task is not None and task.cancelling():
                        # redis-py can swallow a cancellation that lands while it reconnects; honour it here
                        raise asyncio.CancelledError
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        # (Re)subscribed, also after redis-py reconnected on its own: changes made while we
                        # were not listening are unknown.
                        cache.clear()
                    elif message.get("type") == "message":
                        data = message["data"]
                        user_id = data.decode() if isinstance(data, bytes) else str(data)
                        for evict in forget or (cache.invalidate,):
                            evict(user_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("profile invalidation channel lost; retrying", extra={"reason": type(exc).__name__})
            await asyncio.sleep(1.0)
