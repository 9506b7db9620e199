"""Configuration from the environment (and `.env`), validated once at start-up (SPEC §3).

A mistake stops start-up with one line per variable; values are never echoed, so a
malformed secret cannot leak through an error message.
"""

from __future__ import annotations

import base64
import os
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
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

from agent_gateway.domain import Rate


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
_PLACEHOLDERS = ("change-me", "changeme", "placeholder", "example", "your-", "secret-key", "xxxx", "password")
# zxcvbn's guess count for a secret, log10: 30 is what 128 random bits (32 hex digits) score; runs,
# repeats, keyboard walks and a few dictionary words score far below it.
_MIN_GUESSES_LOG10 = 30


def strong(secret: str) -> bool:
    """32+ characters, as hard to guess as 128 random bits by zxcvbn's estimate, and no placeholder text."""
    normal = secret.lower().replace("_", "-").replace(" ", "-")
    if len(secret) < 32 or any(word in normal for word in _PLACEHOLDERS):
        return False
    from zxcvbn import zxcvbn  # only production checks need it; it loads word lists

    return float(zxcvbn(secret)["guesses_log10"]) >= _MIN_GUESSES_LOG10


def strong_key(fernet_key: str) -> bool:
    """A Fernet key from a random source: 32 bytes show about 30 distinct values, a made-up one far fewer."""
    return len(set(base64.urlsafe_b64decode(fernet_key))) >= 20


HTTP = ("http", "https")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, frozen=True)

    agent_secret_key: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias=AliasChoices("AGENT_SECRET_KEY", "AGENT_SECRET_MASTER_KEY")
    )
    agent_tokens_only: bool = False
    # Derives and verifies the per-user agent tokens; never the agent secret itself. Comma-separated
    # for rotation: the first issues, all verify.
    agent_token_key: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Where the bare agent secret is accepted from (Letta's addresses); unset: anywhere.
    agent_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    # Proxies whose X-Forwarded-For names the client (beyond SPEC §3); unset: the peer is the client.
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    litellm_base_url: str = "http://127.0.0.1:4000"
    # LiteLLM's admin key: the gateway then makes, updates, rotates and deletes users' keys (ops/users.py).
    litellm_master_key: SecretStr | None = None
    letta_base_url: str | None = None
    letta_api_key: SecretStr | None = None
    letta_ownership: Literal["tags", "ams"] = "tags"
    letta_allowed_tools: CSV = ()
    public_base_url: str = "http://127.0.0.1:8000"
    ams_base_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY")
    )
    supabase_jwt_secret: SecretStr | None = None
    # The embedded defaults' files (the SQLite store, the outbox), the same wherever the gateway or
    # the CLI is started: a relative default made the CLI elsewhere use a new, empty database.
    agent_gateway_home: Path = Field(default_factory=lambda: _data_home())
    database_url: str = ""  # unset: SQLite at AGENT_GATEWAY_HOME/gateway.db (`_home_database`)
    # Seals the LiteLLM keys the gateway stores; comma-separated for rotation: the first seals, all open.
    key_encryption_key: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Ledger rows the database cannot take wait here (JSON lines); default: beside the SQLite file, else home.
    ledger_outbox: Path | None = None
    redis_url: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout: float = Field(default=0.05, gt=0)
    # Each instance says it lives this often; one silent for three beats has its reservations freed.
    instance_heartbeat_seconds: float = Field(default=10.0, gt=0)
    # How often each instance reads the profile change log: a change applies within twice this.
    profile_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    allowed_origins: CSV = ()
    max_concurrent_requests: int = Field(default=1000, ge=1)
    max_concurrent_per_user: int = Field(default=100, ge=1)
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
    # Slow clients lose their slot: headers within HEADER_TIMEOUT and MAX_HEADER_BYTES (408, 431); a
    # body within BODY_TIMEOUT, or longer while it arrives at MIN_BODY_RATE bytes a second (408).
    header_timeout: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    body_timeout: float = Field(default=30.0, gt=0)
    min_body_rate: int = Field(default=16 * 1024, ge=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    admin_api_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    environment: Literal["development", "test", "staging", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)

    @field_validator("agent_secret_key", "agent_token_key", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> tuple[str, ...]:
        return _split(value)

    @field_validator("admin_api_key", "supabase_jwt_secret", "litellm_master_key", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        """`ADMIN_API_KEY=` left empty means no admin key, never an empty one that anybody can send."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("agent_gateway_home", mode="before")
    @classmethod
    def _absolute_home(cls, value: Any) -> Path:
        home = _home(value)
        if not home.is_absolute():  # relative, each folder the CLI runs in would have a store of its own
            raise ValueError("must be an absolute path, the same from every folder")
        return home

    @field_validator("key_encryption_key", mode="before")
    @classmethod
    def _fernet_keys(cls, value: Any) -> tuple[str, ...]:
        keys = _split(value)
        for key in keys:
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise ValueError(
                    "expected Fernet keys, 32 url-safe base64 bytes each (agent-gateway keys new)"
                ) from None
        return keys

    @field_validator("agent_allowed_networks", "trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[IPv4Network | IPv6Network, ...]:
        try:
            return tuple(ip_network(part, strict=False) for part in _split(value))
        except ValueError:
            raise ValueError("expected comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1/32") from None

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allowed_origins", "letta_allowed_tools", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> tuple[str, ...]:
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

    @model_validator(mode="before")
    @classmethod
    def _home_database(cls, data: Any) -> Any:
        if isinstance(data, dict) and "database_url" not in data:
            home = _home(data.get("agent_gateway_home"))
            data = {**data, "database_url": f"sqlite:///{home / 'gateway.db'}"}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        mistakes = []  # every one of them, one line each, not just the first
        if self.is_production:
            if not self.agent_secret_key:
                mistakes.append("AGENT_SECRET_KEY: required when ENVIRONMENT=production")
            for name, secrets in (
                ("AGENT_SECRET_KEY", self.agent_secret_key),
                ("AGENT_TOKEN_KEY", self.agent_token_key),
                ("ADMIN_API_KEY", (self.admin_api_key,) if self.admin_api_key else ()),
            ):
                if any(not strong(secret.get_secret_value()) for secret in secrets):
                    mistakes.append(f"{name}: a placeholder or weak value; production needs 32+ random characters")
            if self.supabase_jwt_secret and not strong(self.supabase_jwt_secret.get_secret_value()):
                mistakes.append(
                    "SUPABASE_JWT_SECRET: a placeholder or weak value; production needs 32+ random characters"
                )
            if any(not strong_key(key.get_secret_value()) for key in self.key_encryption_key):
                mistakes.append("KEY_ENCRYPTION_KEY: not from a random source; make one with agent-gateway keys new")
            if "*" in self.allowed_origins:
                mistakes.append("ALLOWED_ORIGINS: '*' is refused when ENVIRONMENT=production")
            if not self.key_encryption_key and not self.profiles_from_postgrest:
                mistakes.append("KEY_ENCRYPTION_KEY: required when ENVIRONMENT=production and the gateway stores keys")
        if {key.get_secret_value() for key in self.agent_token_key} & {
            key.get_secret_value() for key in self.agent_secret_key
        }:
            mistakes.append("AGENT_TOKEN_KEY: must differ from AGENT_SECRET_KEY, else the secret mints every token")
        if self.admin_api_key is not None:
            admin = self.admin_api_key.get_secret_value()
            others = [*self.agent_secret_key, *self.agent_token_key, self.litellm_master_key, self.supabase_jwt_secret]
            if admin in {other.get_secret_value() for other in others if other is not None}:
                # The agent secret lives in Letta's configuration: equal, anyone who reads that is admin.
                mistakes.append("ADMIN_API_KEY: must differ from the agent secrets and the other keys")
        if self.workers > 1 and not self.redis_url:
            mistakes.append("WORKERS: more than 1 needs REDIS_URL, else every limit is multiplied by the workers")
        if mistakes:
            raise ValueError("\n".join(mistakes))
        return self

    @property
    def outbox_path(self) -> Path:
        if self.ledger_outbox is not None:
            return self.ledger_outbox.absolute()
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///") + ".outbox.jsonl").absolute()
        return self.agent_gateway_home / "ledger-outbox.jsonl"

    @property
    def litellm_root_url(self) -> str:
        """Where LiteLLM's health and management routes live, also when calls go to `…/v1`."""
        return self.litellm_base_url.removesuffix("/v1")

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def profiles_from_postgrest(self) -> bool:
        """Profiles (and their keys) are the platform's, read through Supabase; else the gateway stores them."""
        return self.supabase_url is not None and self.supabase_service_role_key is not None

    @property
    def key_encryption_keys(self) -> tuple[bytes, ...]:
        return tuple(key.get_secret_value().encode() for key in self.key_encryption_key)

    @property
    def token_keys(self) -> tuple[bytes, ...]:
        return tuple(key.get_secret_value().encode() for key in self.agent_token_key)

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


def _home(value: Any) -> Path:
    """AGENT_GATEWAY_HOME as given (`~` expanded), or the default when unset or empty."""
    given = str(value or "").strip()
    return Path(given).expanduser() if given else _data_home()


def _data_home() -> Path:
    """`$XDG_DATA_HOME/agent-gateway`, by default `~/.local/share/agent-gateway`."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # A relative XDG_DATA_HOME is ignored, as the XDG spec says.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share") / "agent-gateway"
