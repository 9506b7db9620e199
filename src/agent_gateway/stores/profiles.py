"""User profiles (SPEC §4): who may call, with which LiteLLM key, which models, what monthly limit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from agent_gateway.domain import Profile, parse_models
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.profile_changes import record_change


class ProfileSource(Protocol):
    async def get(self, user_id: str) -> Profile | None: ...


class UserStore(ProfileSource, Protocol):
    """Where users are written: the gateway's own database, or Supabase's table through PostgREST."""

    def can_hold(self, user_id: str) -> bool: ...

    async def list(self, after: str | None = None, limit: int | None = None) -> list[Profile]: ...

    async def count(self) -> int: ...

    async def add(self, profile: Profile) -> bool: ...

    async def update(self, user_id: str, **changes: Any) -> bool: ...

    async def remove(self, user_id: str) -> bool: ...


class ProfileStore:
    """Profiles in the gateway's own database (SQLite or PostgreSQL), their keys sealed by `cipher`.

    Every write logs the user in the change log in the same transaction, so running instances
    forget their cached copy (stores/profile_changes.py).
    """

    def __init__(self, database: Database, cipher: KeyCipher) -> None:
        self.database = database
        self.cipher = cipher

    @property
    def _table(self) -> sa.Table:
        return self.database.profiles

    @property
    def _key(self) -> sa.Column[Any]:
        return self._table.c[self.database.key_column]

    def can_hold(self, user_id: str) -> bool:
        """False for an id the table cannot hold (a platform table keyed by UUID, a non-UUID id), which
        would otherwise be a database error instead of "no such user"."""
        if not isinstance(self._table.c.id.type, sa.Uuid):
            return True
        try:
            uuid.UUID(user_id)
        except ValueError:
            return False
        return True

    async def get(self, user_id: str) -> Profile | None:
        if not self.can_hold(user_id):
            return None
        query = sa.select(self._table).where(self._table.c.id == user_id)
        async with self.database.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return self._profile(row) if row else None

    async def list(self, after: str | None = None, limit: int | None = None) -> list[Profile]:
        """Profiles by id; with `after`, only those whose id sorts after it (a page's cursor)."""
        query = sa.select(self._table).order_by(self._table.c.id).limit(limit)
        if after is not None:
            query = query.where(self._table.c.id > after)
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._profile(row) for row in rows]

    async def count(self) -> int:
        async with self.database.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(self._table))).scalar_one())

    async def add(self, profile: Profile) -> bool:
        """Insert; False when the id is taken."""
        if await self.get(profile.id) is not None:
            return False
        values = {
            "id": profile.id,
            self.database.key_column: self.cipher.seal(profile.litellm_key),
            "allowed_models": self._models_value(profile.allowed_models),
            "monthly_limit": profile.monthly_limit,
        }
        if profile.created_at is not None and "created_at" in self._table.c:  # a profile put back as it was
            values["created_at"] = profile.created_at
        try:
            async with self.database.begin() as conn:
                await conn.execute(sa.insert(self._table).values(**values))
                await record_change(conn, profile.id)
        except sa.exc.IntegrityError:
            if await self.get(profile.id) is not None:
                return False  # added by someone else since we looked
            raise
        return True

    async def update(self, user_id: str, **changes: Any) -> bool:
        """Apply `changes` (litellm_key, allowed_models, monthly_limit); False when no such user."""
        values: dict[str, Any] = {}
        if "litellm_key" in changes:
            values[self.database.key_column] = self.cipher.seal(changes["litellm_key"])
        if "allowed_models" in changes:
            values["allowed_models"] = self._models_value(changes["allowed_models"])
        if "monthly_limit" in changes:
            values["monthly_limit"] = changes["monthly_limit"]
        if not self.can_hold(user_id):
            return False
        if not values:  # an empty UPDATE is a syntax error; nothing to change is fine for an existing user
            return await self.get(user_id) is not None
        async with self.database.begin() as conn:
            result = await conn.execute(sa.update(self._table).where(self._table.c.id == user_id).values(**values))
            if result.rowcount:
                await record_change(conn, user_id)
        return bool(result.rowcount)

    async def remove(self, user_id: str) -> bool:
        if not self.can_hold(user_id):
            return False
        async with self.database.begin() as conn:
            result = await conn.execute(sa.delete(self._table).where(self._table.c.id == user_id))
            if result.rowcount:
                await record_change(conn, user_id)
        return bool(result.rowcount)

    async def reseal_keys(self) -> int:
        """Every stored key sealed under the cipher's first key (`agent-gateway keys rotate`); how many changed."""
        key = self._key
        async with self.database.connect() as conn:
            rows = (await conn.execute(sa.select(self._table.c.id, key))).all()
        changed = 0
        for user_id, stored in rows:
            resealed = self.cipher.resealed(stored or "") if stored else None
            if resealed is None:
                continue
            async with self.database.begin() as conn:  # only if nobody set a new key meanwhile
                result = await conn.execute(
                    sa.update(self._table).where(self._table.c.id == user_id, key == stored).values({key: resealed})
                )
            changed += result.rowcount
        return changed

    def _models_value(self, models: frozenset[str] | Sequence[str] | None) -> Any:
        if models is None:
            return None
        ordered = sorted(models)
        column_type = self._table.c.allowed_models.type
        if isinstance(column_type, sa.ARRAY | sa.JSON):
            return ordered
        return orjson.dumps(ordered).decode()

    def _profile(self, row: Any) -> Profile:
        return Profile(
            id=str(row["id"]),
            litellm_key=self.cipher.open(row[self.database.key_column] or ""),
            allowed_models=parse_models(row["allowed_models"]),
            monthly_limit=row["monthly_limit"],
            created_at=row.get("created_at"),
        )
