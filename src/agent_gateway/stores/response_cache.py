"""A short per-user cache for GET answers marked cacheable (`/models`, `/api/v1/me`), SPEC §6.

In-process by default; in Redis when configured, so every instance shares it. Only 200s are
kept, and only for the user who asked: the key always names the user.
"""

from __future__ import annotations

import contextlib
import time

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

CachedAnswer = tuple[bytes, bytes]  # content type, body
MAX_ENTRIES = 10_000


class ResponseCache:
    def __init__(self, redis: Redis | None = None, prefix: str = "agw:cache:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._entries: dict[str, tuple[float, CachedAnswer]] = {}

    async def get(self, user_id: str, key: str) -> CachedAnswer | None:
        name = f"{self.prefix}{user_id}:{key}"
        if self.redis is not None:
            try:
                raw = await self.redis.get(name)
            except (RedisError, OSError):
                return None  # a cache miss, not an error
            if raw is None:
                return None
            content_type, body = orjson.loads(raw)
            return content_type.encode(), body.encode()
        entry = self._entries.get(name)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    async def put(self, user_id: str, key: str, answer: CachedAnswer, ttl: float) -> None:
        name = f"{self.prefix}{user_id}:{key}"
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):  # a cache that cannot write is just a cache miss
                await self.redis.set(name, orjson.dumps([answer[0].decode(), answer[1].decode()]), px=int(ttl * 1000))
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))
        self._entries[name] = (time.monotonic() + ttl, answer)
