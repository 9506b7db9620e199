"""Configuration from the environment (SPEC §3): defaults, aliases, rates, and one line per mistake."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_gateway.cli import main
from agent_gateway.domain import Rate
from agent_gateway.settings import ConfigError, load_settings
from tests.conftest import settings_variables

SECRET = "s3cr3t-do-not-print-9b1e"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the caller's shell and no `.env` reaches these tests."""
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def config_error(**env: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
    return str(caught.value)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.agent_secrets == ()
    assert settings.agent_tokens_only is False
    assert settings.litellm_base_url == "http://127.0.0.1:4000"
    assert settings.database_url == f"sqlite:///{Path.home()}/.local/share/agent-gateway/gateway.db"
    assert settings.redis_url is None
    assert settings.allowed_origins == ()
    assert settings.rate_limit_general == Rate(1000, 60.0, "1000/minute")
    assert settings.rate_limit_agent == Rate(100, 60.0, "100/minute")
    assert settings.rate_limit_agent_tokens is None
    assert settings.limits_fail_mode == "open"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.is_production is False


def test_the_default_store_lives_at_one_absolute_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.setenv("XDG_DATA_HOME", "data")  # relative: ignored, as the XDG spec says
    default = tmp_path / "me" / ".local" / "share" / "agent-gateway"
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{default}/gateway.db"
    assert settings.outbox_path == default / "gateway.db.outbox.jsonl"
    monkeypatch.setenv("AGENT_GATEWAY_HOME", "")  # empty: the default
    assert load_settings().database_url == f"sqlite:///{default}/gateway.db"

    monkeypatch.setenv("AGENT_GATEWAY_HOME", "~/gateway")
    assert load_settings().database_url == f"sqlite:///{tmp_path}/me/gateway/gateway.db"
    on_postgres = load_settings(database_url="postgresql://db.example.com/gw")
    assert on_postgres.outbox_path == tmp_path / "me" / "gateway" / "ledger-outbox.jsonl"
    # Relative, the CLI run from another folder would find another, empty store.
    assert config_error(AGENT_GATEWAY_HOME="var") == (
        "AGENT_GATEWAY_HOME: must be an absolute path, the same from every folder"
    )


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_BASE_URL", "https://litellm.example.com:4000/")
    monkeypatch.setenv("DATABASE_URL", "postgresql://gw:pw@db.example.com:5432/gw")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/2")
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://a.example.com, https://b.example.com,")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("AGENT_TOKENS_ONLY", "true")
    settings = load_settings()
    assert settings.litellm_base_url == "https://litellm.example.com:4000"  # trailing slash dropped
    assert settings.database_url == "postgresql://gw:pw@db.example.com:5432/gw"
    assert settings.workers == 4
    assert settings.allowed_origins == ("https://a.example.com", "https://b.example.com")
    assert settings.log_level == "DEBUG"
    assert settings.agent_tokens_only is True


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    settings = load_settings(port=9100, agent_secret_key="one,two")
    assert settings.port == 9100
    assert settings.agent_secrets == (b"one", b"two")


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=8123\nAGENT_SECRET_KEY=from-dotenv\n")
    settings = load_settings()
    assert settings.port == 8123
    assert settings.agent_secrets == (b"from-dotenv",)


def test_comma_separated_secrets_are_all_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SECRET_KEY", " new-secret , old-secret ,")
    assert load_settings().agent_secrets == (b"new-secret", b"old-secret")


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("AGENT_SECRET_MASTER_KEY", "agent_secret_key"),
        ("SUPABASE_SERVICE_KEY", "supabase_service_role_key"),
    ],
)
def test_aliases(monkeypatch: pytest.MonkeyPatch, variable: str, field: str) -> None:
    monkeypatch.setenv(variable, "aliased-value")
    settings = load_settings()
    if field == "agent_secret_key":
        assert settings.agent_secrets == (b"aliased-value",)
    else:
        assert settings.supabase_service_role_key is not None
        assert settings.supabase_service_role_key.get_secret_value() == "aliased-value"


def test_secrets_are_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SECRET_KEY", SECRET)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SECRET + "-supabase")
    settings = load_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


@pytest.mark.parametrize(
    ("text", "limit", "period", "canonical"),
    [
        ("100/minute", 100, 60.0, "100/minute"),
        ("100", 100, 60.0, "100/minute"),
        ("5/second", 5, 1.0, "5/second"),
        ("7/hour", 7, 3600.0, "7/hour"),
        ("3/day", 3, 86400.0, "3/day"),
        (" 20 / Minutes ", 20, 60.0, "20/minute"),
    ],
)
def test_rate_parsing(text: str, limit: int, period: float, canonical: str) -> None:
    rate = Rate.parse(text)
    assert (rate.limit, rate.period, rate.text) == (limit, period, canonical)
    assert rate.window == int(period)


@pytest.mark.parametrize("text", ["5/fortnight", "5/s", "minute", "-1/minute", "0/minute", "1.5/minute", ""])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_rates_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_AGENT", "5/second")
    monkeypatch.setenv("RATE_LIMIT_GENERAL", "200")
    monkeypatch.setenv("RATE_LIMIT_AGENT_TOKENS", "100000/hour")
    settings = load_settings()
    assert settings.rate_limit_agent == Rate(5, 1.0, "5/second")
    assert settings.rate_limit_general == Rate(200, 60.0, "200/minute")
    assert settings.rate_limit_agent_tokens == Rate(100000, 3600.0, "100000/hour")


def test_empty_token_rate_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_AGENT_TOKENS", "")
    assert load_settings().rate_limit_agent_tokens is None


STRONG = "q7Yv2LpX9sWm4TzR8nKc3HbJ6fDg1EaU"  # 32 random characters
SEAL = "nZ5uD0h8XGmB1hE2a3LkqvR7o9Ww4yTcJfPzS6bUeIs="  # a Fernet key for KEY_ENCRYPTION_KEY


def test_production_with_secret_and_origins_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "Production")
    monkeypatch.setenv("AGENT_SECRET_KEY", STRONG)
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://app.example.com")
    monkeypatch.setenv("KEY_ENCRYPTION_KEY", SEAL)
    settings = load_settings()
    assert settings.is_production


def test_production_stores_keys_only_sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ENVIRONMENT": "production", "AGENT_SECRET_KEY": STRONG, "ALLOWED_ORIGINS": "https://app.example.com"}
    message = config_error(**env)
    assert message == "KEY_ENCRYPTION_KEY: required when ENVIRONMENT=production and the gateway stores keys"
    message = config_error(**env, KEY_ENCRYPTION_KEY=SECRET)
    assert message.startswith("KEY_ENCRYPTION_KEY: ") and SECRET not in message


def test_workers_with_redis_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings().workers == 2


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LITELLM_BASE_URL": "not a url"}, "LITELLM_BASE_URL"),
        ({"LITELLM_BASE_URL": "ftp://litellm:4000"}, "LITELLM_BASE_URL"),
        ({"LITELLM_BASE_URL": "http://"}, "LITELLM_BASE_URL"),
        ({"LITELLM_BASE_URL": "http://litellm:port"}, "LITELLM_BASE_URL"),
        ({"LITELLM_BASE_URL": ""}, "LITELLM_BASE_URL"),
        ({"LETTA_BASE_URL": "letta:8283"}, "LETTA_BASE_URL"),
        ({"DATABASE_URL": "mysql://db/gateway"}, "DATABASE_URL"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
        ({"RATE_LIMIT_AGENT": "5/fortnight"}, "RATE_LIMIT_AGENT"),
        ({"RATE_LIMIT_AGENT": ""}, "RATE_LIMIT_AGENT"),
        ({"RATE_LIMIT_GENERAL": "lots"}, "RATE_LIMIT_GENERAL"),
        ({"ENVIRONMENT": "production", "KEY_ENCRYPTION_KEY": SEAL}, "AGENT_SECRET_KEY"),
        (
            {
                "ENVIRONMENT": "production",
                "AGENT_SECRET_KEY": STRONG,
                "ALLOWED_ORIGINS": "*",
                "KEY_ENCRYPTION_KEY": SEAL,
            },
            "ALLOWED_ORIGINS",
        ),
        ({"KEY_ENCRYPTION_KEY": "not a fernet key"}, "KEY_ENCRYPTION_KEY"),
        ({"WORKERS": "2"}, "WORKERS"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"PORT": "eighty"}, "PORT"),
        ({"LIMITS_FAIL_MODE": "sometimes"}, "LIMITS_FAIL_MODE"),
        ({"LETTA_OWNERSHIP": "owner"}, "LETTA_OWNERSHIP"),
    ],
)
def test_misconfiguration_is_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    message = config_error(**env)
    assert "\n" not in message
    assert message.startswith(f"{variable}: ")


def test_unknown_unit_is_explained() -> None:
    message = config_error(RATE_LIMIT_AGENT="5/fortnight")
    assert message == "RATE_LIMIT_AGENT: unknown unit 'fortnight'; use second, minute, hour or day"


def test_every_mistake_gets_its_own_line() -> None:
    message = config_error(
        LITELLM_BASE_URL="litellm:4000", DATABASE_URL="oracle://db", RATE_LIMIT_AGENT="5/fortnight", PORT="x"
    )
    lines = message.splitlines()
    assert sorted(line.split(":", 1)[0] for line in lines) == [
        "DATABASE_URL",
        "LITELLM_BASE_URL",
        "PORT",
        "RATE_LIMIT_AGENT",
    ]


def test_every_inconsistency_gets_its_own_line() -> None:
    message = config_error(ENVIRONMENT="production", ALLOWED_ORIGINS="*", WORKERS="3")
    variables = [line.split(":", 1)[0] for line in message.splitlines()]
    assert variables == ["AGENT_SECRET_KEY", "ALLOWED_ORIGINS", "KEY_ENCRYPTION_KEY", "WORKERS"]


@pytest.mark.parametrize(
    "env",
    [
        {"AGENT_SECRET_KEY": SECRET, "LITELLM_BASE_URL": "bad url", "RATE_LIMIT_AGENT": "5/fortnight"},
        {"AGENT_SECRET_KEY": STRONG, "ENVIRONMENT": "production", "ALLOWED_ORIGINS": "*", "WORKERS": "2"},
        {"AGENT_SECRET_MASTER_KEY": SECRET, "PORT": "nope"},
        {"DATABASE_URL": f"mysql://gw:{SECRET}@db/gateway"},
        {"REDIS_URL": f"redis://:{SECRET}@", "WORKERS": "2"},
        {"LITELLM_BASE_URL": f"http://user:{SECRET}@"},
        {"PORT": SECRET},
        {"MAX_BODY_BYTES": SECRET},
    ],
)
def test_values_never_appear_in_errors(env: dict[str, str]) -> None:
    message = config_error(**env)
    assert SECRET not in message
    assert "s3cr3t" not in message


def _serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in settings_variables()}
    return subprocess.run(
        [sys.executable, "-m", "agent_gateway", "serve"],
        env={**clean, "DATABASE_URL": f"sqlite:///{cwd}/gw.db", "PORT": "1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_serve_stops_with_one_clear_line(tmp_path: Path) -> None:
    result = _serve({"AGENT_SECRET_KEY": SECRET, "LITELLM_BASE_URL": "litellm:4000"}, tmp_path)
    assert result.returncode != 0
    assert result.stderr.splitlines() == ["Error: configuration: LITELLM_BASE_URL: expected a http/https URL"]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "gw.db").exists()  # nothing was started


def test_serve_names_every_mistake_on_its_own_line(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/gw.db", "AGENT_SECRET_KEY": SECRET}
    result = CliRunner().invoke(main, ["serve"], env={**env, "RATE_LIMIT_AGENT": "5/fortnight", "PORT": "x"})
    assert result.exit_code != 0
    assert sorted(result.stderr.splitlines()) == [
        "Error: configuration: PORT: Input should be a valid integer, unable to parse string as an integer",
        "Error: configuration: RATE_LIMIT_AGENT: unknown unit 'fortnight'; use second, minute, hour or day",
    ]
    production = {"ENVIRONMENT": "production", "ALLOWED_ORIGINS": "*", "WORKERS": "2"}
    result = CliRunner().invoke(main, ["serve"], env=production)
    assert result.exit_code != 0
    assert result.stderr.splitlines() == [
        "Error: configuration: AGENT_SECRET_KEY: required when ENVIRONMENT=production",
        "Error: configuration: ALLOWED_ORIGINS: '*' is refused when ENVIRONMENT=production",
        "Error: configuration: KEY_ENCRYPTION_KEY: required when ENVIRONMENT=production and the gateway stores keys",
        "Error: configuration: WORKERS: more than 1 needs REDIS_URL, else every limit is multiplied by the workers",
    ]
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENT_SECRET_KEY", "change-me-agent-secret"),
        ("AGENT_SECRET_KEY", "x"),
        ("AGENT_SECRET_KEY", "a" * 48),  # long, but no randomness in it
        ("AGENT_TOKEN_KEY", "short-token-key"),
        ("ADMIN_API_KEY", "your-admin-key-goes-here-0123456789"),
        ("ADMIN_API_KEY", "CHANGE_ME_admin_key_for_the_gateway_1"),
        ("AGENT_SECRET_KEY", "0123456789abcdefghijklmnopqrstuvwxyz"),  # a run, not a secret
        ("AGENT_SECRET_KEY", "correct horse battery staple"),
        ("SUPABASE_JWT_SECRET", "super-secret-jwt-token"),
    ],
)
def test_production_refuses_placeholder_and_weak_secrets(name: str, value: str) -> None:
    env = {"ENVIRONMENT": "production", "AGENT_SECRET_KEY": STRONG, "KEY_ENCRYPTION_KEY": SEAL, name: value}
    message = config_error(**env)
    assert message.splitlines() == [f"{name}: a placeholder or weak value; production needs 32+ random characters"]
    assert value not in message


def test_environment_is_one_of_a_fixed_set() -> None:
    assert config_error(ENVIRONMENT="prod").startswith("ENVIRONMENT: ")
    assert load_settings(environment="Staging").environment == "staging"


def test_production_refuses_a_made_up_key_encryption_key() -> None:
    made_up = base64.urlsafe_b64encode(b"0123456789" * 3 + b"ab").decode()  # a valid Fernet key, no randomness
    message = config_error(ENVIRONMENT="production", AGENT_SECRET_KEY=STRONG, KEY_ENCRYPTION_KEY=made_up)
    assert message == "KEY_ENCRYPTION_KEY: not from a random source; make one with agent-gateway keys new"
    assert load_settings(key_encryption_key=made_up).key_encryption_keys  # outside production it is the user's call


def test_the_token_key_is_never_the_agent_secret() -> None:
    message = config_error(AGENT_SECRET_KEY=f"old,{STRONG}", AGENT_TOKEN_KEY=STRONG)
    assert message == "AGENT_TOKEN_KEY: must differ from AGENT_SECRET_KEY, else the secret mints every token"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_admin_key_means_no_admin_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ADMIN_API_KEY", value)
    assert load_settings().admin_api_key is None


def test_the_admin_key_must_differ_from_the_agent_secrets() -> None:
    for same in ({"AGENT_SECRET_KEY": "one-key-for-all-2c9f"}, {"AGENT_TOKEN_KEY": "one-key-for-all-2c9f"}):
        message = config_error(ADMIN_API_KEY="one-key-for-all-2c9f", **same)
        assert "ADMIN_API_KEY: must differ" in message and "one-key-for-all" not in message
