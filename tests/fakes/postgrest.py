"""A fake Supabase Data API (PostgREST behind Supabase's API gateway) over real HTTP, backed by the real
PostgreSQL: `GET /rest/v1/user_profiles` answered from a table in a schema of the fake's own.

What it does as Supabase does:
- the gateway's key check: no `apikey` → 401 "No API key found in request"; a wrong one → 401
  "Invalid API key" (these two bodies are the gateway's `{"message","hint"}`, not PostgREST's shape);
- `Authorization: Bearer` must hold a JWT, as PostgREST requires: an `sb_secret_…` key there → 401
  PGRST301 "Expected 3 parts in JWT; got 1" (what local Supabase answers); a JWT other than the
  configured key → 401 PGRST301; absent → the role the `apikey` grants;
- `select=` (`*`, columns, `alias:column`), filters `col=[not.]op.value` with eq, neq, gt, gte, lt, lte,
  like, ilike, in.(a,"b,c"), is.null|true|false; `order`, `limit`, `offset`;
- rows come from PostgreSQL's own `json_agg`, so text[] is a JSON array, bigint a number, timestamptz
  "2025-01-31T12:00:00.123456+00:00", exactly as PostgREST renders them;
- `Accept: application/vnd.pgrst.object+json`: one row → the object, else 406 PGRST116;
- `Prefer: count=exact` → `Content-Range: 0-0/<total>`; writes: `POST` (insert one object), `PATCH`
  and `DELETE` with the same filters, 201/204 or, with `Prefer: return=representation`, the rows
  (shaped by `select=`); a body column the table lacks → 400 PGRST204; a taken id → 409 23505;
- errors in PostgREST's `{"code","details","hint","message"}`: unknown column 400 `42703`, a value the
  column type refuses 400 `22P02` (e.g. a non-UUID against a uuid id), bad filter 400 PGRST100,
  unknown table 404 PGRST205.

Runs on its own loop in a thread (like the fake LiteLLM), so sync tests and a gateway process can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from multidict import CIMultiDict

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SB_SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
# A legacy `service_role` key's shape: header.payload.signature, base64url (the signature is not checked).
LEGACY_JWT_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0"
    ".EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)
TABLE = "user_profiles"
OBJECT_TYPE = "application/vnd.pgrst.object+json"
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE", "ilike": "ILIKE"}

T = TypeVar("T")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: CIMultiDict[str]
    status: int = 0


class PostgrestError(Exception):
    """An answer in PostgREST's error shape."""

    def __init__(
        self, status: int, code: str | None, message: str, details: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"code": code, "details": details, "hint": hint, "message": message}


class GatewayError(Exception):
    """An answer from Supabase's API gateway (Kong), before PostgREST: `{"message","hint"}`."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.body = {"message": message, "hint": hint}


@dataclass
class FakePostgrest:
    """`FakePostgrest(service_key).start()`; `url` is the `SUPABASE_URL`, `service_key` the service key."""

    service_key: str = SB_SECRET_KEY
    database_url: str = TEST_DATABASE_URL
    key_column: str = "litellm_key_id"  # or "litellm_key", the older deployments' name
    id_type: str = "text"  # or "uuid", as a table keyed by auth.users ids is
    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0  # seconds before each answer, for timeout tests
    schema: str = field(default_factory=lambda: f"pgrst_{uuid.uuid4().hex[:12]}")
    requests: list[Seen] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _pool: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakePostgrest:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name="fake-postgrest")
        self._thread.start()
        try:
            self._call(self._setup(), timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._teardown(), timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakePostgrest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Seeding, from sync code (blocks) or async code (awaits; the fake's loop is another thread's).

    def add(
        self,
        user_id: str,
        litellm_key: str,
        allowed_models: Sequence[str] | None = None,
        monthly_limit: int | None = None,
        created_at: datetime | None = None,
    ) -> None:
        self._call(self._insert(user_id, litellm_key, allowed_models, monthly_limit, created_at))

    async def add_async(
        self,
        user_id: str,
        litellm_key: str,
        allowed_models: Sequence[str] | None = None,
        monthly_limit: int | None = None,
        created_at: datetime | None = None,
    ) -> None:
        await self._wrap(self._insert(user_id, litellm_key, allowed_models, monthly_limit, created_at))

    def remove(self, user_id: str) -> None:
        self._call(self._execute(f"DELETE FROM {self._table} WHERE id = $1::text::{self.id_type}", user_id))

    async def remove_async(self, user_id: str) -> None:
        await self._wrap(self._execute(f"DELETE FROM {self._table} WHERE id = $1::text::{self.id_type}", user_id))

    def last(self) -> Seen:
        return self.requests[-1]

    def for_user(self, user_id: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.query.get("id") == [f"eq.{user_id}"]]

    # Plumbing.

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        assert self._loop is not None, "start() the fake first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "start() the fake first"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    @property
    def _table(self) -> str:
        return f"{_ident(self.schema)}.{_ident(TABLE)}"

    async def _setup(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=4)
        async with self._pool.acquire() as conn:
            await conn.execute(f"CREATE SCHEMA {_ident(self.schema)}")
            await conn.execute(
                f"CREATE TABLE {self._table} ("
                f" id {self.id_type} PRIMARY KEY,"
                f" {_ident(self.key_column)} text NOT NULL,"
                " allowed_models text[] NULL,"
                " monthly_limit bigint NULL,"
                " created_at timestamptz DEFAULT now())"
            )
        app = web.Application()
        app.router.add_get("/rest/v1/{table}", self._get)
        for method in ("POST", "PATCH", "DELETE"):
            app.router.add_route(method, "/rest/v1/{table}", self._get)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)  # a `delay` is not waited out
        await self._runner.setup()
        sock = socket.socket()
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {_ident(self.schema)} CASCADE")
            await self._pool.close()

    async def _insert(
        self,
        user_id: str,
        key: str,
        models: Sequence[str] | None,
        limit: int | None,
        created_at: datetime | None,
    ) -> None:
        await self._execute(
            f"INSERT INTO {self._table} (id, {_ident(self.key_column)}, allowed_models, monthly_limit, created_at)"
            f" VALUES ($1::text::{self.id_type}, $2, $3, $4, coalesce($5, now()))",
            user_id,
            key,
            list(models) if models is not None else None,
            limit,
            created_at,
        )

    async def _execute(self, sql: str, *args: Any) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(sql, *args)

    async def _columns(self) -> dict[str, str]:
        """Column name → SQL type, as PostgREST's schema cache knows them."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                f"{_ident(self.schema)}.{_ident(TABLE)}",
            )
        if not rows:
            raise _no_table(TABLE)
        return {row["attname"]: row["type"] for row in rows}

    def drop_table(self) -> None:
        """Drop `user_profiles`, for tests of PostgREST's answer when the table is gone."""
        self._call(self._execute(f"DROP TABLE {self._table}"))

    # The Data API.

    async def _get(self, request: web.Request) -> web.Response:
        seen = Seen(
            request.method,
            request.path,
            {key: request.query.getall(key) for key in request.query},
            CIMultiDict(request.headers),
        )
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            self._authorize(request)
            response = await (self._select(request) if request.method == "GET" else self._write(request))
        except GatewayError as exc:
            response = web.json_response(exc.body, status=401)
        except PostgrestError as exc:
            response = web.json_response(exc.body, status=exc.status)
        seen.status = response.status
        return response

    def _authorize(self, request: web.Request) -> None:
        apikey = request.headers.get("apikey") or request.query.get("apikey")
        if not apikey:
            raise GatewayError("No API key found in request", "No `apikey` request header or url param was found.")
        if apikey != self.service_key:
            raise GatewayError("Invalid API key", "Double check your Supabase `anon` or `service_role` API key.")
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return  # the role the apikey grants
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise PostgrestError(401, "PGRST301", "Expected 3 parts in JWT; got 1")
        parts = len(token.split("."))
        if parts != 3:
            raise PostgrestError(401, "PGRST301", f"Expected 3 parts in JWT; got {parts}")
        if token != self.service_key:
            raise PostgrestError(401, "PGRST301", "No suitable key or wrong key type")

    async def _select(self, request: web.Request) -> web.Response:
        table = request.match_info["table"]
        if table != TABLE:
            raise _no_table(table)
        columns = await self._columns()
        args: list[Any] = []
        select = _select_list(request.query.get("select", "*"), columns)
        where: list[str] = []
        for name, value in request.query.items():
            if name in {"select", "order", "limit", "offset", "apikey"}:
                continue
            where.append(_condition(name, value, columns, args))
        sql = f"SELECT {select} FROM {self._table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if "order" in request.query:
            sql += " ORDER BY " + _order(request.query["order"], columns)
        for clause in ("limit", "offset"):
            if clause in request.query:
                sql += f" {clause.upper()} {_count(clause, request.query[clause])}"
        try:
            async with self._pool.acquire() as conn:
                body, count = await conn.fetchrow(
                    f"SELECT coalesce(json_agg(t), '[]')::text, count(*) FROM ({sql}) t", *args
                )
        except asyncpg.PostgresError as exc:
            raise _database_error(exc) from None

        total = "*"
        if "count=exact" in request.headers.get("Prefer", ""):
            where_sql = f"SELECT count(*) FROM {self._table}" + (" WHERE " + " AND ".join(where) if where else "")
            async with self._pool.acquire() as conn:
                total = str(await conn.fetchval(where_sql, *args))
        content_range = f"0-{count - 1}/{total}" if count else f"*/{total}"
        if OBJECT_TYPE in request.headers.get("Accept", ""):
            if count != 1:
                raise PostgrestError(
                    406,
                    "PGRST116",
                    "Cannot coerce the result to a single JSON object",
                    f"The result contains {count} rows",
                )
            async with self._pool.acquire() as conn:
                body = await conn.fetchval("SELECT ($1::json -> 0)::text", body)
            return _json(body, OBJECT_TYPE, content_range)
        return _json(body, "application/json", content_range)

    async def _write(self, request: web.Request) -> web.Response:
        """INSERT one object (POST), UPDATE (PATCH) or DELETE the rows the filters match."""
        table = request.match_info["table"]
        if table != TABLE:
            raise _no_table(table)
        columns = await self._columns()
        args: list[Any] = []
        where = [
            _condition(name, value, columns, args)
            for name, value in request.query.items()
            if name not in {"select", "apikey"}
        ]
        values: dict[str, Any] = {}
        if request.method != "DELETE":
            try:
                values = await request.json()
            except ValueError:
                raise PostgrestError(400, "PGRST102", "Empty or invalid json") from None
            if not isinstance(values, dict):
                raise PostgrestError(400, "PGRST102", "All object keys must match")
            for column in values:
                if column not in columns:
                    raise PostgrestError(
                        400, "PGRST204", f"Could not find the '{column}' column of '{TABLE}' in the schema cache"
                    )
        record = f"json_populate_record(null::{self._table}, ${len(args) + 1}::json)"
        names = [_ident(column) for column in values]
        if request.method == "POST":
            sql = f"INSERT INTO {self._table} ({', '.join(names)}) SELECT {', '.join(names)} FROM {record}"
        elif request.method == "PATCH":
            sql = f"UPDATE {self._table} SET ({', '.join(names)}) = (SELECT {', '.join(names)} FROM {record})"
        else:
            sql = f"DELETE FROM {self._table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        select = _select_list(request.query.get("select", "*"), columns)
        params = [*args, json.dumps(values)] if request.method != "DELETE" else args
        try:
            async with self._pool.acquire() as conn:
                body = await conn.fetchval(
                    f"WITH t AS ({sql} RETURNING *) SELECT coalesce(json_agg(x), '[]')::text"
                    f" FROM (SELECT {select} FROM t) x",
                    *params,
                )
        except asyncpg.UniqueViolationError as exc:
            raise PostgrestError(409, "23505", str(exc), exc.detail) from None
        except asyncpg.PostgresError as exc:
            raise _database_error(exc) from None
        created = request.method == "POST"
        if "return=representation" not in request.headers.get("Prefer", ""):
            return web.Response(status=201 if created else 204)
        return web.Response(text=body, status=201 if created else 200, content_type="application/json", charset="utf-8")


def _json(body: str, content_type: str, content_range: str) -> web.Response:
    response = web.Response(text=body, content_type=content_type, charset="utf-8")
    response.headers["Content-Range"] = content_range
    return response


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _no_table(table: str) -> PostgrestError:
    return PostgrestError(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")


def _unknown_column(column: str) -> PostgrestError:
    return PostgrestError(400, "42703", f"column {TABLE}.{column} does not exist")


def _select_list(select: str, columns: dict[str, str]) -> str:
    items: list[str] = []
    for item in (part.strip() for part in select.split(",")):
        if item == "*":
            items.append("*")
            continue
        alias, _, column = item.rpartition(":")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column) or (alias and not re.fullmatch(r"\w+", alias)):
            raise PostgrestError(400, "PGRST100", f'"failed to parse select parameter ({select})"')
        if column not in columns:
            raise _unknown_column(column)
        items.append(f"{_ident(column)} AS {_ident(alias or column)}")
    return ", ".join(items)


def _condition(column: str, expression: str, columns: dict[str, str], args: list[Any]) -> str:
    if column not in columns:
        raise _unknown_column(column)
    negate = expression.startswith("not.")
    operator, _, value = expression.removeprefix("not.").partition(".")
    ident, sql_type = _ident(column), columns[column]
    if operator in OPERATORS:
        if operator in {"like", "ilike"}:
            value = value.replace("*", "%")
        args.append(value)
        condition = f"{ident} {OPERATORS[operator]} ${len(args)}::text::{sql_type}"
    elif operator == "in" and value.startswith("(") and value.endswith(")"):
        args.append(_in_list(value[1:-1]))
        condition = f"{ident} = ANY(${len(args)}::text[]::{sql_type}[])"
    elif operator == "is" and value in {"null", "true", "false", "unknown"}:
        condition = f"{ident} IS {value.upper()}"
    else:
        raise PostgrestError(
            400, "PGRST100", f'"failed to parse filter ({expression})" (line 1, column 1)', "unexpected operator"
        )
    return f"NOT ({condition})" if negate else condition


def _in_list(inner: str) -> list[str]:
    """`a,"b,c"` → ["a", "b,c"]: PostgREST's list, double quotes around values that hold commas."""
    if not inner.strip():
        return []
    return [item.strip() for item in next(csv.reader([inner], skipinitialspace=True, escapechar="\\"))]


def _order(order: str, columns: dict[str, str]) -> str:
    terms: list[str] = []
    for term in order.split(","):
        column, *modifiers = term.strip().split(".")
        if column not in columns:
            raise _unknown_column(column)
        direction = {"asc": "ASC", "desc": "DESC"}
        nulls = {"nullsfirst": "NULLS FIRST", "nullslast": "NULLS LAST"}
        words = [direction.get(m) or nulls.get(m) for m in modifiers]
        if None in words:
            raise PostgrestError(400, "PGRST100", f'"failed to parse order ({order})" (line 1, column 1)')
        terms.append(" ".join([_ident(column), *(w for w in words if w)]))
    return ", ".join(terms)


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise PostgrestError(400, "PGRST100", f'"failed to parse {name} parameter ({value})"')
    return int(value)


def _database_error(exc: asyncpg.PostgresError) -> PostgrestError:
    """PostgREST's mapping of SQLSTATE to HTTP status, for the states a read can meet."""
    code: str = exc.sqlstate or ""
    if code == "42501":
        status = 403
    elif code in {"42P01", "42883"}:
        status = 404
    elif code.startswith(("22", "42")):
        status = 400
    else:
        status = 500
    return PostgrestError(status, code, getattr(exc, "message", None) or str(exc), exc.detail, exc.hint)


@contextlib.contextmanager
def running_postgrest(**options: Any) -> Iterator[FakePostgrest]:
    """`with running_postgrest(service_key=...) as fake:` the fake up for the block, its schema dropped after."""
    fake = FakePostgrest(**options).start()
    try:
        yield fake
    finally:
        fake.stop()
