"""Which of a user's agent tokens are revoked: every version below `revoked_before` (auth/agent_tokens.py).

One row per user who ever had tokens revoked, in the gateway's own database, read through a
short cache that a revocation empties on every instance (stores/profile_changes.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from cachetools import TTLCache

from agent_gateway.stores.database import Database, token_versions
from agent_gateway.stores.profile_changes import record_change

CACHE_SECONDS = 5.0


class TokenVersions:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._cache: TTLCache[str, int] = TTLCache(100_000, CACHE_SECONDS)

    async def revoked_before(self, user_id: str) -> int:
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        query = sa.select(token_versions.c.revoked_before).where(token_versions.c.user_id == user_id)
        async with self.database.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        self._cache[user_id] = int(found or 0)
        return self._cache[user_id]

    async def revoke(self, user_id: str) -> int:
        """Refuse every token issued so far; returns the version the next token is issued at."""
        version = max(await self._current(user_id), 1) + 1
        async with self.database.begin() as conn:
            updated = await conn.execute(
                sa.update(token_versions).where(token_versions.c.user_id == user_id).values(revoked_before=version)
            )
            if not updated.rowcount:
                await conn.execute(sa.insert(token_versions).values(user_id=user_id, revoked_before=version))
            await record_change(conn, user_id)  # every instance drops its cached version
        self.invalidate(user_id)
        return version

    async def issuing(self, user_id: str) -> int:
        """The version a token is issued at now: 1, or the first one not revoked."""
        return max(await self._current(user_id), 1)

    async def _current(self, user_id: str) -> int:
        self.invalidate(user_id)
        return await self.revoked_before(user_id)

    def invalidate(self, user_id: str) -> None:
        self._cache.pop(user_id, None)
