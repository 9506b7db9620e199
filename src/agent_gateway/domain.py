"""The gateway's own vocabulary, shared by every path: users, profiles, usage, rates, months.

Kept apart from the stores, policies and settings that use them, so none of those has to
import another only for a type.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# A user id as it appears in agent URLs and as a JWT `sub` (SPEC §4). `\Z`, not `$`: no trailing
# newline slips through.
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
USER_ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"  # the same rule, as OpenAPI and messages spell it
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")


def canonical_user_id(user_id: str) -> str:
    """One spelling per user: a UUID in any case, with or without hyphens, is its lowercase
    hyphenated form, so limits, budgets, the ledger, caches and tokens all key one identity.
    Any other id is taken as it is (ids are case-sensitive)."""
    return str(uuid.UUID(user_id)) if _UUID.match(user_id) else user_id


@dataclass(frozen=True, slots=True)
class Profile:
    """Who may call (SPEC §4): the user's LiteLLM key, allowed models and monthly token limit."""

    id: str
    litellm_key: str
    allowed_models: frozenset[str] | None = None
    monthly_limit: int | None = None
    created_at: datetime | None = None

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def __repr__(self) -> str:
        # The key never appears in a repr, so it cannot reach a log line by accident.
        return f"Profile(id={self.id!r}, litellm_key={mask_key(self.litellm_key)!r})"


def mask_key(key: str) -> str:
    """Enough of a key to tell two apart in a listing, never enough to use it."""
    if len(key) <= 8:
        return "****"
    return f"{key[:3]}…{key[-4:]}"


def parse_models(value: Any) -> frozenset[str] | None:
    """An allow-list as stored: a list, JSON text, comma-separated text, or null (all models)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = orjson.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
    return frozenset(str(model) for model in value)


@dataclass(slots=True)
class Usage:
    """What a call cost, in tokens (SPEC §4): as the upstream reported it, or estimated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False


_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/\s*([a-z]+?)s?)?\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` events per `period` seconds, e.g. `100/minute`."""

    limit: int
    period: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text.lower())
        if not match:
            raise ValueError("expected N/second|minute|hour|day")
        unit = match.group(2) or "minute"
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r}; use second, minute, hour or day")
        limit = int(match.group(1))
        if limit < 1:
            raise ValueError("the limit must be at least 1")
        return cls(limit, _UNITS[unit], f"{limit}/{unit}")

    @property
    def window(self) -> int:
        return int(self.period)


def month_of(moment: datetime) -> str:
    """The UTC calendar month a moment falls in, as the ledger keys it: `YYYY-MM`."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"  # a few times per call: strftime costs 4x this


def this_month() -> str:
    return month_of(datetime.now(UTC))


def seconds_to_next_month(now: datetime) -> float:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return (datetime(year, month, 1, tzinfo=UTC) - now).total_seconds()
