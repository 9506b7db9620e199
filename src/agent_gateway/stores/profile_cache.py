"""Profile cache: positive answers for 60 s, unknown users for 5 s (SPEC §5 step 3).

A change to a user evicts their entry sooner: within a poll of the change log, or at once
through Redis (stores/profile_changes.py); the TTLs bound only what those could not tell.
"""

from __future__ import annotations

import asyncio
import time

from agent_gateway.domain import Profile
from agent_gateway.ops.metrics import MODEL_LABELS
from agent_gateway.stores.profiles import ProfileSource

MAX_ENTRIES = 100_000


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
