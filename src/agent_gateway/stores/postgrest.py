"""Profiles from Supabase's `user_profiles` table through PostgREST (SPEC §3, §4).

Used when `SUPABASE_URL` and a service key are set; a read-only `ProfileSource`, one GET per lookup
(the profile cache in front of it keeps that off the hot path).
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
from agent_gateway.upstream.client import UpstreamClient

PATH = "/rest/v1/user_profiles"
# A JWT is three base64url segments; the legacy `service_role` key is one (it starts `eyJ`).
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# Column names of the key in the platform's deployments, newest first (SPEC §4).
_KEY_COLUMNS = ("litellm_key_id", "litellm_key")
# PostgreSQL's "invalid input syntax" (e.g. a non-UUID id against a `uuid` primary key, as Supabase's
# `user_profiles.id` often is): such a user cannot exist, which is "no such user", not an outage.
_INVALID_INPUT = "22P02"


class ProfileSourceError(Exception):
    """PostgREST could not answer: unreachable, timed out, refused our key or failed.

    The text never holds the service key. `status` is PostgREST's HTTP status, None when no answer came.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
        query = urlencode({"id": f"eq.{user_id}", "select": "*"})
        failure: str | None = None
        try:
            response = await self.supabase.open("GET", f"{PATH}?{query}", headers=self._headers, timeout=self._timeout)
            body = await response.read()
        except UpstreamTimeout:
            failure = f"PostgREST did not answer in {self._timeout_seconds:g} s"
        except GatewayError:
            failure = "PostgREST unreachable"
        if failure is not None:  # raised outside the handler: nothing of the request hangs off it
            raise ProfileSourceError(failure)
        status = response.status

        if not 200 <= status < 300:
            error = _error_fields(body)
            if status == 400 and error.get("code") == _INVALID_INPUT:
                return None
            detail = " ".join(str(error[field]) for field in ("code", "message") if error.get(field))
            raise ProfileSourceError(self._scrub(f"PostgREST answered {status}: {detail or 'no detail'}")[:300], status)

        try:
            rows = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProfileSourceError(f"PostgREST answered {status} with a body that is not JSON", status) from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ProfileSourceError(f"PostgREST answered {status} with JSON that is not a list of rows", status)
        return _profile(rows[0]) if rows else None

    def _scrub(self, text: str) -> str:
        """Belt and braces: nothing upstream should echo the key, but the text goes to logs and errors."""
        return text.replace(self._key, "****") if self._key else text


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
