"""The usage ledger: one row per admitted LLM call, the source of truth for billing (SPEC §4).

A row is written `in_flight` at admission, holding the prompt estimate, and `settled` with the
real usage at the end. Writes are batched: the flusher upserts everything pending every
200 ms and on close, so a call that ends within one interval costs one row write. The upsert
never turns a settled row back, which makes settling idempotent by row id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_gateway.stores.database import Database, ledger

log = logging.getLogger("agent_gateway.ledger")
FLUSH_INTERVAL = 0.2
IN_FLIGHT, SETTLED = "in_flight", "settled"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class LedgerEntry:
    user_id: str
    route: str
    model: str | None
    request_id: str | None
    reserved_tokens: int = 0
    usage: Usage = field(default_factory=Usage)
    id: str = field(default_factory=lambda: os.urandom(12).hex())
    admitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    status: int | None = None
    state: str = IN_FLIGHT

    @property
    def month(self) -> str:
        return self.admitted_at.strftime("%Y-%m")

    def row(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "id": self.id,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "model": self.model,
            "route": self.route,
            "month": self.month,
            "status": self.status,
            "state": self.state,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "total_tokens": usage.total_tokens,
            "reserved_tokens": self.reserved_tokens,
            "estimated": usage.estimated,
            "admitted_at": self.admitted_at,
            "finished_at": self.finished_at,
        }


class Ledger:
    def __init__(self, database: Database, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.database = database
        self.flush_interval = flush_interval
        self._pending: dict[str, LedgerEntry] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._upsert = self._build_upsert()
        self._sqlite_upsert = _sqlite_upsert() if self.database.dialect == "sqlite" else None

    def _build_upsert(self) -> Any:
        insert = postgresql.insert if self.database.dialect == "postgresql" else sqlite.insert
        statement = insert(ledger)
        kept = ("id", "admitted_at")
        updated = {col.name: statement.excluded[col.name] for col in ledger.c if col.name not in kept}
        # A settled row is final, except one that recovery settled (status NULL) for a process
        # that was in fact still running: its real usage, arriving late, wins.
        final = sa.and_(ledger.c.state == SETTLED, ledger.c.status.is_not(None))
        return statement.on_conflict_do_update(index_elements=[ledger.c.id], set_=updated, where=sa.not_(final))

    def admit(self, entry: LedgerEntry) -> None:
        """Record an admitted call; until settled it counts its prompt estimate."""
        entry.usage = Usage(entry.usage.prompt_tokens, 0, 0, entry.usage.prompt_tokens, estimated=True)
        self._pending[entry.id] = entry

    def settle(self, entry: LedgerEntry, status: int | None, usage: Usage) -> bool:
        """Close the call with its final usage; False (and nothing changes) if it was settled already."""
        if entry.state == SETTLED:
            return False
        entry.state = SETTLED
        entry.status = status
        entry.usage = usage
        entry.finished_at = datetime.now(UTC)
        self._pending[entry.id] = entry
        return True

    async def start(self) -> None:
        await self.recover()
        self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-flusher")

    async def recover(self) -> int:
        """Settle, as estimated, the rows a crashed process left in flight."""
        query = (
            sa.update(ledger)
            .where(ledger.c.state == IN_FLIGHT)
            .values(state=SETTLED, estimated=True, finished_at=datetime.now(UTC))
        )
        async with self.database.begin() as conn:
            result = await conn.execute(query)
        if result.rowcount:
            log.warning("settled calls left in flight by an earlier process", extra={"rows": result.rowcount})
        return int(result.rowcount)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("ledger flush failed; rows kept for the next attempt")

    async def flush(self) -> int:
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            try:
                async with self.database.begin() as conn:
                    if self._sqlite_upsert is not None:
                        # The embedded default's hot write: straight to the driver, no per-row
                        # SQLAlchemy parameter processing (values laid out as its SQLite types).
                        rows = [_sqlite_values(entry.row()) for entry in batch.values()]
                        await conn.exec_driver_sql(self._sqlite_upsert, rows)
                    else:
                        await conn.execute(self._upsert, [entry.row() for entry in batch.values()])
            except BaseException:
                # Put the batch back under anything newer, so no row is lost to a failed write.
                batch.update(self._pending)
                self._pending = batch
                raise
            return len(batch)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush()

    async def month_used(self, user_id: str, month: str) -> int:
        """Tokens of `user_id`'s settled calls in `month`: what budgets load when they have none."""
        await self.flush()
        query = sa.select(sa.func.coalesce(sa.func.sum(ledger.c.total_tokens), 0)).where(
            ledger.c.user_id == user_id, ledger.c.month == month, ledger.c.state == SETTLED
        )
        async with self.database.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def month_totals(self, month: str, user_id: str | None = None) -> list[dict[str, Any]]:
        """Per-user totals for `month` (YYYY-MM), pending writes included."""
        await self.flush()
        estimated = sa.func.sum(sa.case((ledger.c.estimated, 1), else_=0))
        query = (
            sa.select(
                ledger.c.user_id,
                sa.func.count().label("requests"),
                sa.func.coalesce(sa.func.sum(ledger.c.prompt_tokens), 0).label("prompt_tokens"),
                sa.func.coalesce(sa.func.sum(ledger.c.completion_tokens), 0).label("completion_tokens"),
                sa.func.coalesce(sa.func.sum(ledger.c.total_tokens), 0).label("total_tokens"),
                sa.func.coalesce(estimated, 0).label("estimated_requests"),
            )
            .where(ledger.c.month == month)
            .group_by(ledger.c.user_id)
            .order_by(ledger.c.user_id)
        )
        if user_id is not None:
            query = query.where(ledger.c.user_id == user_id)
        async with self.database.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        # str(k): the user_id key is SQLAlchemy's `quoted_name`, a str subclass that orjson refuses as a key
        return [{"month": month, **{str(k): (v if k == "user_id" else int(v)) for k, v in row.items()}} for row in rows]


_COLUMNS = [column.name for column in ledger.c]


def _sqlite_upsert() -> str:
    """The same upsert as `Ledger._build_upsert`, as SQLite text with positional parameters."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS if name not in ("id", "admitted_at"))
    return (
        f"INSERT INTO usage_ledger ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        f"WHERE NOT (usage_ledger.state = '{SETTLED}' AND usage_ledger.status IS NOT NULL)"
    )


def _sqlite_values(row: dict[str, Any]) -> tuple[Any, ...]:
    # SQLAlchemy keeps SQLite datetimes as "YYYY-MM-DD HH:MM:SS[.ffffff]" text and parses it back.
    return tuple(
        str(value.replace(tzinfo=None)) if isinstance(value, datetime) else value
        for value in (row[name] for name in _COLUMNS)
    )
