"""The SQL store behind profiles and the usage ledger: SQLite (embedded default) or PostgreSQL.

One SQLAlchemy Core schema serves both. The schema is created on first start; an existing
`user_profiles` table (the platform's Supabase table) is reflected so its key column may be
called `litellm_key_id` or `litellm_key` and `allowed_models` may be `text[]` or JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData()

ledger = sa.Table(
    "usage_ledger",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(128)),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("model", sa.String(256)),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("total_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("reserved_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("estimated", sa.Boolean, nullable=False, default=False),
    sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("instance", sa.String(32)),  # the process that admitted the call: its rows die with it
    sa.Index("ix_usage_ledger_user_month", "user_id", "month"),
    sa.Index("ix_usage_ledger_state", "state"),
)


# Every serving process and when it last said it lives (stores/ledger.py): the calls in flight of
# one silent for long are settled by the others, and nobody else's are.
instances = sa.Table(
    "gateway_instances",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # seconds between its beats: its own silence is three
    sa.Column("process", sa.String(128)),  # boot id/PID namespace/pid: see stores/instances.py
)


# What the gateway saw created on Letta for a user, where Letta keeps no owner of its own
# (an archive), or only for a while (a run's agent): the proof that outlives the process.
letta_objects = sa.Table(
    "letta_objects",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("object_id", sa.String(128), primary_key=True),
    sa.Column("belongs_to", sa.String(128), nullable=False),  # the user, or the agent the object is of
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


# Revoked agent tokens: every version below `revoked_before` (auth/agent_tokens.py).
token_versions = sa.Table(
    "agent_token_versions",
    metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("revoked_before", sa.Integer, nullable=False),
)


# Every change to a user's profile or agent tokens, in commit order: each instance polls it and
# forgets what it cached of that user (stores/profile_changes.py). AUTOINCREMENT: SQLite never
# hands out a pruned number again, so a poller's "everything after N" stays true.
profile_changes = sa.Table(
    "profile_changes",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)


def _profiles_table(target: sa.MetaData, dialect: str) -> sa.Table:
    allowed: sa.types.TypeEngine[Any] = postgresql.ARRAY(sa.Text) if dialect == "postgresql" else sa.JSON()
    return sa.Table(
        "user_profiles",
        target,
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("litellm_key_id", sa.Text, nullable=False),
        sa.Column("allowed_models", allowed),
        sa.Column("monthly_limit", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


_PG_TIMEOUT = 5.0  # seconds to connect, and for one statement


def engine_url(database_url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy async URL and connect args for a `DATABASE_URL`.

    PostgreSQL URLs may carry `?schema=NAME`, which sets the search path (tests use it to give
    each test its own schema).
    """
    parts = urlsplit(database_url)
    if parts.scheme == "sqlite":
        path = database_url.split("sqlite://", 1)[1].removeprefix("/")
        if path and path != ":memory:":
            _owner_only(Path(path))
        return f"sqlite+aiosqlite:///{path}", {}
    query = dict(parse_qsl(parts.query))
    # A hung server (not a refused one) must fail a write, not hold every admission waiting on it:
    # the ledger then keeps its rows in the outbox.
    connect_args: dict[str, Any] = {"timeout": _PG_TIMEOUT, "command_timeout": _PG_TIMEOUT}
    if schema := query.pop("schema", None):
        connect_args["server_settings"] = {"search_path": schema}
    url = urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))
    return url, connect_args


class Database:
    """An engine plus the two tables, as they exist in this database."""

    def __init__(self, database_url: str) -> None:
        url, connect_args = engine_url(database_url)
        self.engine: AsyncEngine = create_async_engine(url, connect_args=connect_args, pool_pre_ping=False)
        self.dialect = self.engine.dialect.name
        self.schema = connect_args.get("server_settings", {}).get("search_path")
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.profiles = _profiles_table(sa.MetaData(), self.dialect)
        self.key_column = "litellm_key_id"

    async def start(self) -> None:
        """Create what is missing and adopt the existing profile table's column names."""
        async with self.engine.begin() as conn:
            if self.schema:
                await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_add_new_columns)
            await conn.run_sync(self._adopt_profiles)

    def _adopt_profiles(self, sync_conn: sa.Connection) -> None:
        inspector = sa.inspect(sync_conn)
        if not inspector.has_table("user_profiles"):
            self.profiles.create(sync_conn)
            return
        reflected = sa.Table("user_profiles", sa.MetaData(), autoload_with=sync_conn)
        if "litellm_key_id" not in reflected.c and "litellm_key" in reflected.c:
            self.key_column = "litellm_key"
        self.profiles = reflected

    def connect(self) -> Any:
        return self.engine.connect()

    def begin(self) -> Any:
        return self.engine.begin()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _add_new_columns(sync_conn: sa.Connection) -> None:
    """Columns a later version added to a table an earlier one created (all nullable)."""
    for table in (ledger, instances):
        present = {column["name"] for column in sa.inspect(sync_conn).get_columns(table.name)}
        for column in table.c:
            if column.name not in present:
                ddl = sa.schema.CreateColumn(column).compile(dialect=sync_conn.dialect)
                sync_conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _owner_only(path: Path) -> None:
    """The SQLite file readable by its owner alone (it holds every user's key and usage), created so
    before SQLite opens it; SQLite gives its -wal and -shm files the database file's own mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            file.chmod(0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL plus a busy timeout let the CLI write profiles while the server reads and writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


__all__ = [
    "Database",
    "engine_url",
    "instances",
    "ledger",
    "letta_objects",
    "metadata",
    "profile_changes",
    "token_versions",
]
