"""The usage ledger: one row per admitted LLM call, the source of truth for billing (SPEC §4).

A row is written `in_flight` at admission, holding the prompt estimate, and `settled` with the
real usage at the end. The admission is committed before the call goes upstream, shared with
every admission that arrives meanwhile (group commit); settlements are batched every 200 ms
and on close, so a call that ends within one interval costs two small writes at most. The upsert
never turns a settled row back, which makes settling idempotent by row id. A row belongs to the
process that admitted it: when that process has crashed (stores/instances.py), another one
settles it as estimated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_gateway.domain import Usage, month_of
from agent_gateway.errors import DatabaseUnavailable
from agent_gateway.stores.database import Database, ledger
from agent_gateway.stores.instances import Instances
from agent_gateway.stores.outbox import Outbox

log = logging.getLogger("agent_gateway.ledger")
FLUSH_INTERVAL = 0.2
CLOSE_RETRY_SECONDS = 5.0  # the final write waits this long for a locked or briefly absent database
_DATABASE_ERRORS = (sa.exc.SQLAlchemyError, sqlite3.Error, OSError, TimeoutError)
# A row the database refuses for what it holds: retrying it would fail forever, and hold back the rest.
_REFUSED = (sa.exc.IntegrityError, sa.exc.DataError, sqlite3.IntegrityError, sqlite3.DataError, OverflowError)
IN_FLIGHT, SETTLED = "in_flight", "settled"


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
    instance: str | None = None  # the process that admitted it (None: written before instances had ids)

    @property
    def month(self) -> str:
        return month_of(self.admitted_at)

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
            "instance": self.instance,
        }


def entry_from_row(row: dict[str, Any]) -> LedgerEntry:
    """The entry a row (as `LedgerEntry.row()` made it, through JSON) describes."""
    usage = Usage(
        row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"], row["total_tokens"], row["estimated"]
    )
    finished = row["finished_at"]
    return LedgerEntry(
        row["user_id"],
        row["route"],
        row["model"],
        row["request_id"],
        reserved_tokens=row["reserved_tokens"],
        usage=usage,
        id=row["id"],
        admitted_at=datetime.fromisoformat(row["admitted_at"]),
        finished_at=datetime.fromisoformat(finished) if finished else None,
        status=row["status"],
        state=row["state"],
        instance=row.get("instance"),
    )


class Ledger:
    """Rows batched in memory, written every `flush_interval`; while the database cannot take
    them they go to the `outbox` on disk, and from there to the database when it can."""

    def __init__(
        self,
        database: Database,
        outbox: Outbox | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        instances: Instances | None = None,
    ) -> None:
        self.database = database
        self.instances = instances or Instances(database, heartbeat=10.0)
        self.outbox = outbox or Outbox(None)
        self._spilled = self.outbox.exists()  # rows an earlier process left there
        self.flush_interval = flush_interval
        self._pending: dict[str, LedgerEntry] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._upsert = self._build_upsert()
        # The embedded default's writes go straight to sqlite3 (see _SqliteWriter).
        self._sqlite = _SqliteWriter(database.engine.url.database or "") if database.dialect == "sqlite" else None
        self.reachable = True  # as last seen: an outage is logged when it begins and when it ends
        # Told the ids of the instances found dead, to free what else they held (Redis reservations).
        self.on_dead: Callable[[list[str]], Awaitable[None]] | None = None
        self._wake = asyncio.Event()
        self._group: asyncio.Future[None] | None = None  # what the admissions waiting for the next commit await

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """A read for a caller: the database failing becomes 503 `database_unavailable`."""
        try:
            yield
        except _DATABASE_ERRORS as exc:
            self._seen(exc)
            raise DatabaseUnavailable() from exc
        self._seen(None)

    def _seen(self, failure: BaseException | None) -> None:
        """Log the database's state when it changes, not on every failed write or read."""
        if failure is not None and self.reachable:
            log.error("usage database unreachable; rows kept in memory", extra={"reason": type(failure).__name__})
        elif failure is None and not self.reachable:
            log.warning("usage database reachable again", extra={"pending": len(self._pending)})
        self.reachable = failure is None

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
        entry.instance = self.instances.id
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
        await self.instances.beat()
        replayed = await self._flush_all()  # an earlier process's outbox first, then what it left in flight
        if replayed:
            log.warning("wrote rows an earlier process left in the outbox", extra={"rows": replayed})
        # Not by silence yet: just after a database outage every live instance looks silent.
        await self.recover(unowned=True, steady_for=0.0)
        self._flusher = asyncio.create_task(self._flush_forever(), name="ledger-flusher")

    async def recover(self, unowned: bool = False, steady_for: float = math.inf) -> int:
        """Settle, as estimated, the calls in flight of processes that have crashed (and free
        what else they held); with `unowned` (at start) also rows an earlier version wrote
        without a process id. `steady_for`: how long this process's own beats have gone through."""
        owner = ledger.c.instance
        async with self.database.begin() as conn:
            dead = await self.instances.dead(conn, steady_for)
            # Rows of a process not in the table at all: one found dead and forgotten, whose rows
            # came back from an outbox.
            crashed = sa.or_(owner.in_(dead.ids), sa.and_(owner.is_not(None), owner.not_in(self.instances.known())))
            if unowned:
                crashed = sa.or_(owner.is_(None), crashed)
            query = (
                sa.update(ledger)
                .where(ledger.c.state == IN_FLIGHT, crashed)
                .values(state=SETTLED, estimated=True, finished_at=datetime.now(UTC))
            )
            result = await conn.execute(query)
            await conn.execute(self.instances.forget(dead.ids))
        if result.rowcount:
            log.warning("settled calls left in flight by a crashed process", extra={"rows": result.rowcount})
        if dead.ids and self.on_dead is not None:
            await self.on_dead(dead.ids)
        return int(result.rowcount)

    async def keep_alive(self) -> None:
        """Say every heartbeat that this process lives, and settle the calls of crashed ones."""
        steady_since: float | None = time.monotonic()
        while True:
            await asyncio.sleep(self.instances.heartbeat)
            try:
                await self.instances.beat()
                steady_since = steady_since or time.monotonic()
                await self.recover(steady_for=time.monotonic() - steady_since)
            except _DATABASE_ERRORS:
                steady_since = None  # the flusher logs the outage

    async def admit_durably(self, entry: LedgerEntry) -> None:
        """Record an admitted call and return once its row is on disk (in the database, or in the
        outbox while the database is away): the upstream never sees a call a crash could lose.
        Admissions arriving together share one commit (group commit)."""
        self.admit(entry)
        if self._flusher is None:  # not serving (a CLI, a test): write now
            await self.flush()
            return
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            self._wake.set()
        await asyncio.shield(self._group)

    async def _flush_forever(self) -> None:
        while True:
            # Every flush_interval for settlements; at once when an admission waits for its commit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            group, self._group = self._group, None  # admissions from here on wait for the next commit
            try:
                await self.flush()
            except _DATABASE_ERRORS as exc:
                self._seen(exc)
                try:
                    await self._spill()  # on disk, so a crash during the outage loses nothing
                except OSError:  # a full disk: the rows stay in memory, and this loop goes on
                    log.exception("ledger rows could not be written to the outbox either; kept in memory")
            except Exception:
                log.exception("ledger flush failed; rows kept for the next attempt")
            else:
                self._seen(None)
            finally:
                if group is not None:
                    group.set_result(None)

    async def flush(self) -> int:
        """Write what the outbox holds, then what is pending, in one transaction; rows written."""
        async with self._lock:
            claims = self.outbox.claim() if self._spilled else []
            kept = [entry_from_row(row) for row in self.outbox.read(claims)]
            if not self._pending and not claims:
                return 0
            batch, self._pending = self._pending, {}
            groups = [entries for entries in (kept, list(batch.values())) if entries]  # older states first
            try:
                try:
                    await self._write(groups)
                except _REFUSED:
                    # Each row on its own then, and the ones still refused set aside for an operator.
                    refused = [entry for group in groups for entry in group if not await self._taken(entry)]
                    self._set_aside(refused)
            except BaseException:
                # Put the batch back under anything newer, so no row is lost to a failed write.
                batch.update(self._pending)
                self._pending = batch
                raise
            if claims:
                self.outbox.done(claims)
                self._spilled = self.outbox.exists()  # rows spilled after the claim: the next flush
            return len(kept) + len(batch)

    async def _flush_all(self) -> int:
        """Flush until the outbox is empty too (it is replayed one claim at a time)."""
        written = await self.flush()
        while self._spilled:
            written += await self.flush()
        return written

    async def _write(self, groups: list[list[LedgerEntry]]) -> None:
        if self._sqlite is not None:
            await self._sqlite.write([[_sqlite_values(entry) for entry in group] for group in groups])
        else:
            async with self.database.begin() as conn:
                for group in groups:
                    await conn.execute(self._upsert, [entry.row() for entry in group])

    async def _taken(self, entry: LedgerEntry) -> bool:
        """Write one row; False if the database refuses it for what it holds."""
        try:
            await self._write([[entry]])
        except _REFUSED:
            return False
        return True

    def _set_aside(self, refused: list[LedgerEntry]) -> None:
        self.outbox.set_aside([entry.row() for entry in refused])
        log.error(
            "usage rows the database refuses were set aside",
            extra={"rows": len(refused), "ids": [entry.id for entry in refused][:20], "file": str(self.outbox.refused)},
        )

    async def _spill(self) -> int:
        """Move what is pending to the outbox; how many rows it then holds."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            try:
                self.outbox.spill([entry.row() for entry in batch.values()])
            except OSError:
                batch.update(self._pending)  # back in memory, under anything newer
                self._pending = batch
                raise
            self._spilled = self._spilled or bool(batch)
            return self.outbox.held()

    async def close(self) -> int:
        """The final write, retried while the database is locked or away for a moment; what it
        could not write stays in the outbox for the next start. Returns how many rows that is."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        try:
            left = await self._final_write()
            if not left:  # gone for good: what it may still hold in flight is for others to settle now
                with contextlib.suppress(*_DATABASE_ERRORS):
                    await self.instances.leave()
            return left
        finally:
            if self._sqlite is not None:
                self._sqlite.close()
            if self._group is not None:  # admissions still waiting: the final write was their commit
                self._group.set_result(None)
                self._group = None

    async def _final_write(self) -> int:
        deadline = asyncio.get_running_loop().time() + CLOSE_RETRY_SECONDS
        while True:
            try:
                await self._flush_all()
                return 0
            except _DATABASE_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    self._seen(exc)
                    break
                await asyncio.sleep(0.1)
        left = await self._spill()
        log.error(
            "usage rows left in the outbox; they are written at the next start",
            extra={"rows": left, "outbox": str(self.outbox.path)},
        )
        return left

    async def month_used(self, user_id: str, month: str) -> int:
        """Tokens of `user_id`'s settled calls in `month`: what budgets load when they have none."""
        query = sa.select(sa.func.coalesce(sa.func.sum(ledger.c.total_tokens), 0)).where(
            ledger.c.user_id == user_id, ledger.c.month == month, ledger.c.state == SETTLED
        )
        async with self._reading():
            await self.flush()
            async with self.database.connect() as conn:
                return int((await conn.execute(query)).scalar_one())

    async def month_in_flight(self, user_id: str, month: str) -> list[tuple[str, int]]:
        """(id, reserved tokens) of `user_id`'s calls still in flight in `month`: what a budget
        reloaded from the ledger must hold besides the settled total."""
        query = sa.select(ledger.c.id, ledger.c.reserved_tokens).where(
            ledger.c.user_id == user_id, ledger.c.month == month, ledger.c.state == IN_FLIGHT
        )
        async with self._reading():
            await self.flush()
            async with self.database.connect() as conn:
                return [(str(row_id), int(tokens)) for row_id, tokens in (await conn.execute(query)).all()]

    async def month_totals(self, month: str, user_id: str | None = None) -> list[dict[str, Any]]:
        """Per-user totals for `month` (YYYY-MM), pending writes included."""
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
        async with self._reading():
            await self.flush()
            async with self.database.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        # str(k): the user_id key is SQLAlchemy's `quoted_name`, a str subclass that orjson refuses as a key
        return [{"month": month, **{str(k): (v if k == "user_id" else int(v)) for k, v in row.items()}} for row in rows]

    async def model_totals(self, month: str, user_id: str | None = None) -> list[dict[str, Any]]:
        """Per-user, per-model totals for `month`, cached prompt tokens apart (what prices need)."""
        query = (
            sa.select(
                ledger.c.user_id,
                ledger.c.model,
                sa.func.count().label("requests"),
                *(
                    sa.func.coalesce(sa.func.sum(ledger.c[name]), 0).label(name)
                    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")
                ),
            )
            .where(ledger.c.month == month)
            .group_by(ledger.c.user_id, ledger.c.model)
            .order_by(ledger.c.user_id, ledger.c.model)
        )
        if user_id is not None:
            query = query.where(ledger.c.user_id == user_id)
        async with self._reading():
            await self.flush()
            async with self.database.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [{str(k): (v if k in ("user_id", "model") else int(v)) for k, v in row.items()} for row in rows]

    async def daily_totals(self, month: str, user_id: str | None = None) -> list[dict[str, Any]]:
        """Per-day (UTC), per-model totals for `month`: what the admin page charts."""
        day = _utc_day(self.database.dialect).label("day")
        estimated = sa.func.sum(sa.case((ledger.c.estimated, 1), else_=0))
        query = (
            sa.select(
                day,
                ledger.c.model,
                sa.func.count().label("requests"),
                sa.func.coalesce(sa.func.sum(ledger.c.total_tokens), 0).label("total_tokens"),
                sa.func.coalesce(estimated, 0).label("estimated_requests"),
            )
            .where(ledger.c.month == month)
            .group_by(day, ledger.c.model)
            .order_by(day, ledger.c.model)
        )
        if user_id is not None:
            query = query.where(ledger.c.user_id == user_id)
        async with self._reading():
            await self.flush()
            async with self.database.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [{"day": str(row["day"]), "model": row["model"], **{k: int(row[k]) for k in _DAY_SUMS}} for row in rows]


_COLUMNS = [column.name for column in ledger.c]


class _SqliteWriter:
    """Group commits to the embedded SQLite, made on the event loop with a connection of their own.

    A commit in WAL mode with synchronous=NORMAL is a write to the log file, no fsync: done here it
    costs less than the four thread hops a transaction took through SQLAlchemy and aiosqlite, and
    each admission now waits for one. A lock held elsewhere (the CLI) is waited for 0.1 s at most;
    then the write fails like any database error and the rows go to the outbox until the next try.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.upsert = _sqlite_upsert()
        self._connection: sqlite3.Connection | None = None

    async def write(self, groups: list[list[tuple[Any, ...]]]) -> None:
        if self._connection is None:
            self._connection = sqlite3.connect(self.path, timeout=0.1, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
        with self._connection:  # one transaction: committed, or rolled back on any error
            for rows in groups:
                self._connection.executemany(self.upsert, rows)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _sqlite_upsert() -> str:
    """The same upsert as `Ledger._build_upsert`, as SQLite text with positional parameters."""
    updates = ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS if name not in ("id", "admitted_at"))
    return (
        f"INSERT INTO usage_ledger ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        f"WHERE NOT (usage_ledger.state = '{SETTLED}' AND usage_ledger.status IS NOT NULL)"
    )


# The row as the SQLite upsert takes it: the columns in table order, datetimes as the text
# SQLAlchemy keeps them as ("YYYY-MM-DD HH:MM:SS[.ffffff]") and parses back.
_SQLITE_ORDER = (
    "id", "request_id", "user_id", "model", "route", "month", "status", "state", "prompt_tokens",
    "completion_tokens", "cached_tokens", "total_tokens", "reserved_tokens", "estimated", "admitted_at", "finished_at",
    "instance",
)  # fmt: skip
assert tuple(_COLUMNS) == _SQLITE_ORDER, "the ledger's columns changed: change sqlite_values with them"


def _sqlite_values(entry: LedgerEntry) -> tuple[Any, ...]:
    usage, finished = entry.usage, entry.finished_at
    return (
        entry.id,
        entry.request_id,
        entry.user_id,
        entry.model,
        entry.route,
        entry.month,
        entry.status,
        entry.state,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.total_tokens,
        entry.reserved_tokens,
        usage.estimated,
        str(entry.admitted_at.replace(tzinfo=None)),
        str(finished.replace(tzinfo=None)) if finished is not None else None,
        entry.instance,
    )


_DAY_SUMS = ("requests", "total_tokens", "estimated_requests")


def _utc_day(dialect: str) -> sa.ColumnElement[str]:
    """`admitted_at` as its UTC day, YYYY-MM-DD: PostgreSQL keeps a timestamptz, SQLite UTC text."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", ledger.c.admitted_at), "YYYY-MM-DD")
    return sa.func.substr(ledger.c.admitted_at, 1, 10)
