"""Letta objects the gateway saw created for a user, kept in the gateway's own database.

Letta gives an archive no owner, and a Letta 0.11 run forgets its agent when it finishes: for
those the gateway's record of the creation is the proof of ownership, shared by every
instance and kept across restarts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_gateway.stores.database import Database, letta_objects


class LettaObjects:
    def __init__(self, database: Database) -> None:
        self.database = database
        insert = postgresql.insert if database.dialect == "postgresql" else sqlite.insert
        self._record = insert(letta_objects).on_conflict_do_nothing()

    async def record(self, kind: str, object_id: str, belongs_to: str) -> None:
        async with self.database.begin() as conn:
            await conn.execute(self._record, {"kind": kind, "object_id": object_id, "belongs_to": belongs_to})

    async def belongs_to(self, kind: str, object_id: str) -> str | None:
        query = sa.select(letta_objects.c.belongs_to).where(
            letta_objects.c.kind == kind, letta_objects.c.object_id == object_id
        )
        async with self.database.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return str(found) if found is not None else None
