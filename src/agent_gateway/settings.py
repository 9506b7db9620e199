"""Configuration from the environment (and `.env`), validated once at start-up (SPEC §3).

A mistake stops start-up with one line per variable; values are never echoed, so a
malformed secret cannot leak through an error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


def _split(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value or ())


_HOSTLESS = ("sqlite", "unix")  # a file path, not a host


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    expected = f"expected a {'/'.join(schemes)} URL"
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(expected)
    if parts.scheme not in _HOSTLESS:
        try:
            _ = parts.port  # raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"{expected} (bad port)") from None
        if not parts.hostname:
            raise ValueError(f"{expected} (no host)")
    elif parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{expected} (no socket path)")
    return value.rstrip("/") if parts.scheme.startswith("http") else value


CSV = Annotated[tuple[str, ...], NoDecode]
HTTP = ("http", "https")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, frozen=True)

    agent_secret_key: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias=AliasChoices("AGENT_SECRET_KEY", "AGENT_SECRET_MASTER_KEY")
    )
    agent_tokens_only: bool = False
    litellm_base_url: str = "http://127.0.0.1:4000"
    litellm_master_key: SecretStr | None = None
    letta_base_url: str | None = None
    letta_api_key: SecretStr | None = None
    letta_ownership: Literal["tags", "ams"] = "tags"
    public_base_url: str = "http://127.0.0.1:8000"
    ams_base_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY")
    )
    supabase_jwt_secret: SecretStr | None = None
    database_url: str = "sqlite:///./var/gateway.db"
    redis_url: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout: float = Field(default=0.25, gt=0)
    allowed_origins: CSV = ()
    max_concurrent_requests: int = Field(default=1000, ge=1)
    request_timeout: float = Field(default=30.0, gt=0)
    llm_timeout: float = Field(default=600.0, gt=0)
    stream_idle_timeout: float = Field(default=120.0, gt=0)
    rate_limit_general: Annotated[Rate, NoDecode] = Rate.parse("1000/minute")
    rate_limit_agent: Annotated[Rate, NoDecode] = Rate.parse("100/minute")
    rate_limit_agent_tokens: Annotated[Rate | None, NoDecode] = None
    default_reserve_tokens: int = Field(default=4096, ge=0)
    limits_fail_mode: Literal["open", "closed"] = "open"
    stream_drain_seconds: float = Field(default=30.0, ge=0)
    stream_drain_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    admin_api_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    environment: str = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)

    @field_validator("agent_secret_key", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> tuple[str, ...]:
        return _split(value)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        return _split(value)

    @field_validator("rate_limit_general", "rate_limit_agent", "rate_limit_agent_tokens", mode="before")
    @classmethod
    def _rate(cls, value: Any, info: ValidationInfo) -> Rate | None:
        if value is None or isinstance(value, Rate):
            return value
        if str(value).strip() == "":
            if info.field_name == "rate_limit_agent_tokens":
                return None  # empty means off
            raise ValueError("must not be empty; expected N/second|minute|hour|day")
        return Rate.parse(str(value))

    @field_validator("litellm_base_url", "letta_base_url", "ams_base_url", "supabase_url", "public_base_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        checked = _check_url(value, HTTP)
        if checked is None and info.field_name in ("litellm_base_url", "public_base_url"):
            raise ValueError("must not be empty")
        return checked

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        checked = _check_url(value, ("sqlite", "postgresql", "postgres"))
        if checked is None:
            raise ValueError("must not be empty")
        return checked

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("redis", "rediss", "unix"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        mistakes = []  # every one of them, one line each, not just the first
        if self.is_production:
            if not self.agent_secret_key:
                mistakes.append("AGENT_SECRET_KEY: required when ENVIRONMENT=production")
            if "*" in self.allowed_origins:
                mistakes.append("ALLOWED_ORIGINS: '*' is refused when ENVIRONMENT=production")
        if self.workers > 1 and not self.redis_url:
            mistakes.append("WORKERS: more than 1 needs REDIS_URL, else every limit is multiplied by the workers")
        if mistakes:
            raise ValueError("\n".join(mistakes))
        return self

    @property
    def is_production(self) -> bool:
        return self.environment.lower() == "production"

    @property
    def agent_secrets(self) -> tuple[bytes, ...]:
        return tuple(secret.get_secret_value().encode() for secret in self.agent_secret_key)


class ConfigError(Exception):
    """Start-up configuration is wrong; `str()` is one line per mistake, values never included."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(error) for error in exc.errors(include_input=False))) from None


def _describe(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"]:
        return f"{str(error['loc'][0]).upper()}: {message}"
    return message
