"""Profiles from Supabase's `user_profiles` table through PostgREST (SPEC §3, §4).

Used when `SUPABASE_URL` and a service key are set. The gateway reads one profile per lookup (the
profile cache in front of it keeps that off the hot path); the CLI and the admin API write through
`PostgrestProfileStore`, with the service key, which row-level security lets through
(deploy/supabase/user_profiles.sql).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from agent_gateway.domain import Profile, parse_models
from agent_gateway.errors import GatewayError, UpstreamTimeout
from agent_gateway.stores.database import Database
from agent_gateway.stores.profile_changes import record_change
from agent_gateway.upstream.client import UpstreamClient

PATH = "/rest/v1/user_profiles"
Rows = list[dict[str, Any]]
# A JWT is three base64url segments; the legacy `service_role` key is one (it starts `eyJ`).
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# Column names of the key in the platform's deployments, newest first (SPEC §4).
_KEY_COLUMNS = ("litellm_key_id", "litellm_key")
# PostgreSQL's "invalid input syntax" (e.g. a non-UUID id against a `uuid` primary key, as Supabase's
# `user_profiles.id` often is): such a user cannot exist, which is "no such user", not an outage.
_INVALID_INPUT = "22P02"
_UNIQUE = "23505"  # unique_violation: the id is taken
_NO_COLUMN = "PGRST204"  # "Could not find the '…' column of 'user_profiles' in the schema cache"


class ProfileSourceError(Exception):
    """PostgREST could not answer: unreachable, timed out, refused our key or failed.

    The text never holds the service key. `status` is PostgREST's HTTP status, None when no answer came.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # PostgREST's or PostgreSQL's error code, e.g. 23505


def is_jwt(key: str) -> bool:
    return bool(_JWT.match(key))


def auth_headers(service_key: str) -> dict[str, str]:
    """The headers that authenticate a server-side request to Supabase's Data API.

    `apikey` always: Supabase's API gateway authorizes on it, for both key styles. `Authorization: Bearer`
    only for a legacy JWT key (`service_role`), from which PostgREST takes the database role. The new
    `sb_secret_…` keys are not JWTs: Supabase documents that they cannot go in `Authorization: Bearer`,
    and PostgREST answers such a header with 401 PGRST301 "Expected 3 parts in JWT; got 1"
    (supabase/supabase docs guides/api/api-keys.mdx "Known limitations"; supabase-py issues #1228, #1230;
    supabase-js PR #1293 stopped sending non-JWT keys there).
    """
    headers = {"apikey": service_key}
    if is_jwt(service_key):
        headers["Authorization"] = f"Bearer {service_key}"
    return headers


class PostgrestProfileSource:
    """`GET {SUPABASE_URL}/rest/v1/user_profiles?id=eq.<id>&select=*` with the service key."""

    def __init__(self, supabase: UpstreamClient, service_key: str, timeout: float = 5) -> None:
        self.supabase = supabase
        self._key = service_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_seconds = timeout
        # A JSON array, not `application/vnd.pgrst.object+json`: zero rows is then `[]` rather than a 406
        # (PGRST116) that we would have to tell apart from real errors, and that fills Supabase's logs.
        self._headers = {**auth_headers(service_key), "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"PostgrestProfileSource(url={self.supabase.base_url + PATH!r})"

    async def get(self, user_id: str) -> Profile | None:
        # `select=*` so the key column may be `litellm_key_id` or `litellm_key`.
        try:
            rows = await self._rows("GET", {"id": f"eq.{user_id}", "select": "*"})
        except ProfileSourceError as error:
            if error.code == _INVALID_INPUT:
                return None
            raise
        return _profile(rows[0]) if rows else None

    async def _call(
        self, method: str, query: dict[str, str], body: bytes | None = None, prefer: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One Data API request; its status, the headers read here and body, or ProfileSourceError."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if prefer is not None:
            headers["Prefer"] = prefer
        failure: str | None = None
        try:
            response = await self.supabase.open(
                method, f"{PATH}?{urlencode(query)}", headers=headers, body=body, timeout=self._timeout
            )
            answer = await response.read()
        except UpstreamTimeout:
            failure = f"PostgREST did not answer in {self._timeout_seconds:g} s"
        except GatewayError:
            failure = "PostgREST unreachable"
        if failure is not None:  # raised outside the handler: nothing of the request hangs off it
            raise ProfileSourceError(failure)
        status = response.status
        if not 200 <= status < 300:
            error = _error_fields(answer)
            detail = " ".join(str(error[field]) for field in ("code", "message") if error.get(field))
            message = self._scrub(f"PostgREST answered {status}: {detail or 'no detail'}")[:300]
            raise ProfileSourceError(message, status, error.get("code"))
        return status, {"content-range": response.header("content-range") or ""}, answer

    async def _rows(
        self, method: str, query: dict[str, str], body: bytes | None = None, prefer: str | None = None
    ) -> Rows:
        status, _, answer = await self._call(method, query, body, prefer)
        try:
            rows = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise ProfileSourceError(f"PostgREST answered {status} with a body that is not JSON", status) from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ProfileSourceError(f"PostgREST answered {status} with JSON that is not a list of rows", status)
        return rows

    def _scrub(self, text: str) -> str:
        """Belt and braces: nothing upstream should echo the key, but the text goes to logs and errors."""
        return text.replace(self._key, "****") if self._key else text


class PostgrestProfileStore(PostgrestProfileSource):
    """The platform's `user_profiles` written through PostgREST with the service key: what the CLI
    and the admin API use when profiles come from Supabase. Keys are stored as the platform stores
    them (row-level security keeps them from users); every write is also logged in the gateway's
    own change log, so running instances forget their cached copy."""

    def __init__(self, supabase: UpstreamClient, service_key: str, database: Database, timeout: float = 5) -> None:
        super().__init__(supabase, service_key, timeout)
        self.database = database
        self.key_column = _KEY_COLUMNS[0]  # the older `litellm_key` once PostgREST says there is no such column

    def can_hold(self, user_id: str) -> bool:
        return True  # PostgREST says 22P02 for an id its column cannot hold: then "no such user"

    async def list(self, after: str | None = None, limit: int | None = None) -> list[Profile]:
        query = {"select": "*", "order": "id.asc"}
        if after is not None:
            query["id"] = f"gt.{after}"
        if limit is not None:
            query["limit"] = str(limit)
        return [_profile(row) for row in await self._rows("GET", query)]

    async def count(self) -> int:
        _, headers, _ = await self._call("GET", {"select": "id", "limit": "1"}, prefer="count=exact")
        total = headers.get("content-range", "").rpartition("/")[2]  # "0-0/42"
        if not total.isdigit():
            raise ProfileSourceError("PostgREST answered without a count")
        return int(total)

    async def add(self, profile: Profile) -> bool:
        """Insert; False when the id is taken."""
        row = {
            "id": profile.id,
            "allowed_models": sorted(profile.allowed_models) if profile.allowed_models is not None else None,
            "monthly_limit": profile.monthly_limit,
        }
        try:
            await self._write("POST", {}, {**row, "litellm_key": profile.litellm_key})
        except ProfileSourceError as error:
            if error.code == _UNIQUE:
                return False
            raise
        return True

    async def update(self, user_id: str, **changes: Any) -> bool:
        """Apply `changes` (litellm_key, allowed_models, monthly_limit); False when no such user."""
        if "allowed_models" in changes and changes["allowed_models"] is not None:
            changes["allowed_models"] = sorted(changes["allowed_models"])
        try:
            rows = await self._write("PATCH", {"id": f"eq.{user_id}"}, changes)
        except ProfileSourceError as error:
            if error.code == _INVALID_INPUT:
                return False
            raise
        return bool(rows)

    async def remove(self, user_id: str) -> bool:
        try:
            rows = await self._write("DELETE", {"id": f"eq.{user_id}"}, None)
        except ProfileSourceError as error:
            if error.code == _INVALID_INPUT:
                return False
            raise
        return bool(rows)

    async def _write(self, method: str, query: dict[str, str], row: dict[str, Any] | None) -> Rows:
        """The write, with the key under the table's own column name; the rows it touched, logged."""
        for _ in _KEY_COLUMNS:
            values = dict(row or {})
            if "litellm_key" in values:
                values[self.key_column] = values.pop("litellm_key")
            body = orjson.dumps(values) if row is not None else None
            try:
                rows = await self._rows(method, {**query, "select": "id"}, body, prefer="return=representation")
            except ProfileSourceError as error:
                if error.code == _NO_COLUMN and self.key_column in str(error) and self.key_column != _KEY_COLUMNS[-1]:
                    self.key_column = _KEY_COLUMNS[-1]
                    continue
                raise
            for changed in rows:
                async with self.database.begin() as conn:
                    await record_change(conn, str(changed["id"]))
            return rows
        raise AssertionError("unreachable")  # pragma: no cover


def _error_fields(body: bytes) -> dict[str, Any]:
    """PostgREST's `{"code","details","hint","message"}` (Supabase's gateway sends `{"message","hint"}`)."""
    try:
        error = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return error if isinstance(error, dict) else {}


def _profile(row: dict[str, Any]) -> Profile:
    key = next((row[column] for column in _KEY_COLUMNS if row.get(column)), "")
    limit = row.get("monthly_limit")
    return Profile(
        id=str(row["id"]),
        litellm_key=str(key),
        allowed_models=parse_models(row.get("allowed_models")),
        # bigint is a JSON number in PostgREST; a numeric column would come as a string.
        monthly_limit=int(limit) if limit is not None else None,
        created_at=_timestamp(row.get("created_at")),
    )


def _timestamp(value: Any) -> datetime | None:
    # PostgREST renders timestamptz the way PostgreSQL's to_json does: "2025-01-31T12:00:00.123456+00:00".
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
