"""`agent-gateway` (SPEC §7): users, token, usage; exit 0 or one line on stderr; keys only masked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis

from agent_gateway.auth.agent_tokens import derive_token
from agent_gateway.domain import Usage
from agent_gateway.stores.database import Database
from agent_gateway.stores.ledger import Ledger, LedgerEntry
from agent_gateway.stores.profile_changes import INVALIDATION_CHANNEL, ChangeLog
from tests.conftest import Cli, GatewayProcess, new_user, settings_variables
from tests.fakes.litellm import FakeLiteLLM
from tests.fakes.postgrest import SB_SECRET_KEY, running_postgrest

KEY = "sk-alice-0123456789abcdef"
OTHER_KEY = "sk-rotated-fedcba9876543210"
SECRET = "cli-test-secret-3d9f"
TOKEN_KEY = "cli-test-token-key-81ab"
SOON = ": takes effect within 1 s on every instance\n"  # no Redis: gateways poll the change log


@pytest.fixture(autouse=True)
def no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # a developer's `.env` stays out of these tests


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/gw.db"


@pytest.fixture
def cli(sqlite_url: str) -> Cli:
    return Cli(DATABASE_URL=sqlite_url)


def add_calls(database_url: str, *calls: tuple[str, datetime, Usage | None]) -> None:
    """Ledger rows as the gateway writes them: admitted, then settled with `usage` (None: still in flight)."""

    async def write() -> None:
        database = Database(database_url)
        try:
            await database.start()
            ledger = Ledger(database)
            for user_id, admitted_at, usage in calls:
                entry = LedgerEntry(user_id, "chat", "gpt-4o", None)
                entry.admitted_at = admitted_at
                entry.usage = Usage(prompt_tokens=100)
                ledger.admit(entry)
                if usage is not None:
                    ledger.settle(entry, 200, usage)
            await ledger.flush()
        finally:
            await database.close()

    asyncio.run(write())


def test_users_add_list_show_remove(cli: Cli) -> None:
    assert cli.ok("users", "add", "alice", "--litellm-key", KEY) == "added alice" + SOON
    assert cli.ok("users", "add", "bob", "--litellm-key", "sk-bob", "--allowed-models", "gpt-4o, claude,") == (
        "added bob" + SOON
    )

    listing = cli.ok("users", "list").splitlines()
    assert listing[0].split() == ["user", "litellm", "key", "allowed", "models", "monthly", "limit"]
    assert listing[1].split() == ["alice", "sk-…cdef", "(all)", "(none)"]
    assert listing[2].split() == ["bob", "****", "claude,gpt-4o", "(none)"]
    assert len(listing) == 3

    shown = cli.ok("users", "show", "alice").splitlines()
    assert shown[:4] == [
        "user:           alice",
        "litellm key:    sk-…cdef",
        "allowed models: (all)",
        "monthly limit:  (none)",
    ]
    assert shown[4].startswith("created:        ")

    assert cli.ok("users", "remove", "alice") == "removed alice" + SOON
    assert cli.fails("users", "show", "alice") == "Error: no user alice"
    assert cli.fails("users", "remove", "alice") == "Error: no user alice"
    assert [line.split()[0] for line in cli.ok("users", "list").splitlines()] == ["user", "bob"]


def test_users_list_when_empty(cli: Cli) -> None:
    assert cli.ok("users", "list") == "user  litellm key  allowed models  monthly limit\n"


def test_users_add_with_models_and_limit(cli: Cli) -> None:
    cli.ok(
        "users", "add", "alice", "--litellm-key", KEY, "--allowed-models", "gpt-4o-mini,gpt-4o", "--monthly-limit", "5"
    )
    shown = cli.ok("users", "show", "alice")
    assert "allowed models: gpt-4o,gpt-4o-mini\n" in shown
    assert "monthly limit:  5\n" in shown


def test_users_add_twice_fails_with_one_line(cli: Cli) -> None:
    cli.ok("users", "add", "alice", "--litellm-key", KEY)
    assert cli.fails("users", "add", "alice", "--litellm-key", OTHER_KEY, code=1) == (
        "Error: user alice exists; use `users set`"
    )
    assert "sk-…cdef" in cli.ok("users", "show", "alice")  # the first key stays


@pytest.mark.parametrize("user_id", ["bad id", "a/b", "a" * 129, "ünicode", ""])
def test_invalid_user_id_is_rejected(cli: Cli, user_id: str) -> None:
    line = cli.fails("users", "add", user_id, "--litellm-key", KEY, code=2)
    assert line == "Error: Invalid value for 'USER_ID': must match ^[A-Za-z0-9_-]{1,128}$"
    for command in (["users", "show", user_id], ["users", "remove", user_id], ["token", user_id]):
        assert "USER_ID" in cli.fails(*command, code=2)
    assert "--user" in cli.fails("usage", "--user", user_id, code=2)


def test_users_set(cli: Cli) -> None:
    cli.ok("users", "add", "alice", "--litellm-key", KEY)

    assert cli.ok("users", "set", "alice", "--allowed-models", "gpt-4o,claude", "--monthly-limit", "1000") == (
        "updated alice" + SOON
    )
    shown = cli.ok("users", "show", "alice")
    assert "allowed models: claude,gpt-4o\n" in shown
    assert "monthly limit:  1000\n" in shown
    assert "litellm key:    sk-…cdef\n" in shown

    cli.ok("users", "set", "alice", "--litellm-key", OTHER_KEY)
    shown = cli.ok("users", "show", "alice")
    assert "litellm key:    sk-…3210\n" in shown
    assert "allowed models: claude,gpt-4o\n" in shown  # untouched

    cli.ok("users", "set", "alice", "--all-models", "--no-limit")
    shown = cli.ok("users", "show", "alice")
    assert "allowed models: (all)\n" in shown
    assert "monthly limit:  (none)\n" in shown


def test_users_add_needs_a_key_unless_the_gateway_makes_them(cli: Cli) -> None:
    assert cli.fails("users", "add", "alice", code=2) == (
        "Error: Invalid value for '--litellm-key': must be given unless LITELLM_MASTER_KEY is set"
    )
    assert cli.fails("users", "add", "alice", "--litellm-key", "sk key", code=2) == (
        "Error: Invalid value for '--litellm-key': must be 1-512 printable characters without spaces"
    )
    assert cli.fails("users", "rotate", "alice") == "Error: Rotating a user's key needs LITELLM_MASTER_KEY."


def test_users_are_written_to_supabase_when_profiles_come_from_there(sqlite_url: str) -> None:
    with running_postgrest() as fake:
        supabase = {"SUPABASE_URL": fake.url, "SUPABASE_SERVICE_ROLE_KEY": fake.service_key}
        cli = Cli(DATABASE_URL=sqlite_url, **supabase)
        cli.ok("users", "add", "alice", "--litellm-key", KEY, "--allowed-models", "gpt-4o-mini")
        assert [seen.method for seen in fake.requests if seen.method != "GET"] == ["POST"]
        cli.ok("users", "set", "alice", "--monthly-limit", "500")
        shown = cli.ok("users", "show", "alice")
        assert "monthly limit:  500\n" in shown and KEY not in shown
        assert "alice" in cli.ok("users", "list")
        cli.ok("users", "remove", "alice")
        assert cli.fails("users", "show", "alice") == "Error: no user alice"
        logged = asyncio.run(_changes(sqlite_url))
        assert logged == ["alice", "alice", "alice"]  # running gateways forget each change
    # Supabase away: one line, no key in it.
    down = Cli(DATABASE_URL=sqlite_url, SUPABASE_URL="http://127.0.0.1:1", SUPABASE_SERVICE_ROLE_KEY=SB_SECRET_KEY)
    assert down.fails("users", "list") == "Error: supabase: PostgREST unreachable"


async def _changes(database_url: str) -> list[str]:
    database = Database(database_url)
    try:
        return [user for _, user in await ChangeLog(database).since(0)]
    finally:
        await database.close()


def test_users_set_of_unknown_user_fails(cli: Cli) -> None:
    assert cli.fails("users", "set", "nobody", "--no-limit", code=1) == "Error: no user nobody"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error: nothing to change"),
        (["--allowed-models", "a", "--all-models"], "Error: --allowed-models and --all-models exclude each other"),
        (["--monthly-limit", "5", "--no-limit"], "Error: --monthly-limit and --no-limit exclude each other"),
        (
            ["--allowed-models", " , "],
            "Error: Invalid value for '--allowed-models': must name at least one model, or allow every model",
        ),
        (
            ["--monthly-limit", "-1"],
            "Error: Invalid value for '--monthly-limit': must be a whole number of tokens, 0 or more, below 2^63",
        ),
        (["--monthly-limit", "lots"], "Error: Invalid value for '--monthly-limit': 'lots' is not a valid integer."),
    ],
)
def test_users_set_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    cli.ok("users", "add", "alice", "--litellm-key", KEY)
    assert cli.fails("users", "set", "alice", *args, code=2).startswith(message)


def test_full_key_never_appears_in_any_output(cli: Cli) -> None:
    outputs = [
        cli("users", "add", "alice", "--litellm-key", KEY),
        cli("users", "add", "alice", "--litellm-key", KEY),
        cli("users", "set", "alice", "--litellm-key", OTHER_KEY),
        cli("users", "list"),
        cli("users", "show", "alice"),
        cli("users", "remove", "alice"),
    ]
    for result in outputs:
        for key in (KEY, OTHER_KEY):
            assert key not in result.output
            assert key[3:-4] not in result.output


def test_token_prints_the_derived_token_alone(cli: Cli) -> None:
    result = cli("token", "alice", AGENT_TOKEN_KEY=f"{TOKEN_KEY},old-key", AGENT_SECRET_KEY=SECRET)
    assert result.exit_code == 0
    assert result.stdout == derive_token(TOKEN_KEY.encode(), "alice", 1) + "\n"
    assert result.stderr == ""
    assert TOKEN_KEY not in result.output and SECRET not in result.output
    assert cli.ok("token", "bob", AGENT_TOKEN_KEY=TOKEN_KEY) != result.stdout  # a token opens one user only
    # One identity per user: a UUID in any spelling is the same user, and the same token.
    upper = cli.ok("token", "6F9619FF-8B86-D011-B42D-00C04FC964FF", AGENT_TOKEN_KEY=TOKEN_KEY)
    assert upper == cli.ok("token", "6f9619ff8b86d011b42d00c04fc964ff", AGENT_TOKEN_KEY=TOKEN_KEY)


def test_revoking_issues_a_new_version(cli: Cli) -> None:
    first = cli.ok("token", "alice", AGENT_TOKEN_KEY=TOKEN_KEY)
    renewed = cli.ok("token", "alice", "--revoke", AGENT_TOKEN_KEY=TOKEN_KEY)
    assert renewed != first and renewed.startswith("agt2.2.")
    assert cli.ok("token", "alice", AGENT_TOKEN_KEY=TOKEN_KEY) == renewed  # issued at the new version from now on


def test_token_without_its_key_fails(cli: Cli) -> None:
    assert cli.fails("token", "alice", code=1, AGENT_SECRET_KEY=SECRET) == "Error: AGENT_TOKEN_KEY is not set"


JANUARY = datetime(2024, 1, 15, 12, tzinfo=UTC)
FEBRUARY = datetime(2024, 2, 1, tzinfo=UTC)


def test_usage_table_and_json(cli: Cli, sqlite_url: str) -> None:
    add_calls(
        sqlite_url,
        ("alice", JANUARY, Usage(100, 20, 0, 120)),
        ("alice", JANUARY, Usage(50, 10, 5, 60)),
        ("alice", JANUARY, None),  # in flight: its prompt estimate
        ("bob", JANUARY, Usage(7, 3, 0, 10, estimated=True)),
        ("bob", FEBRUARY, Usage(1, 1, 0, 2)),
    )

    table = cli.ok("usage", "--month", "2024-01").splitlines()
    assert [line.split() for line in table] == [
        ["user", "requests", "prompt", "completion", "total", "estimated"],
        ["alice", "3", "250", "30", "280", "1"],
        ["bob", "1", "7", "3", "10", "1"],
    ]

    rows = orjson.loads(cli.ok("usage", "--month", "2024-01", "--json"))
    assert rows == [
        {
            "month": "2024-01",
            "user_id": "alice",
            "requests": 3,
            "prompt_tokens": 250,
            "completion_tokens": 30,
            "total_tokens": 280,
            "estimated_requests": 1,
        },
        {
            "month": "2024-01",
            "user_id": "bob",
            "requests": 1,
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "estimated_requests": 1,
        },
    ]
    assert orjson.loads(cli.ok("usage", "--month", "2024-01", "--user", "bob", "--json")) == [rows[1]]
    assert [line.split()[0] for line in cli.ok("usage", "--month", "2024-02").splitlines()] == ["user", "bob"]


def test_usage_defaults_to_this_month(cli: Cli, sqlite_url: str) -> None:
    now = datetime.now(UTC)
    add_calls(sqlite_url, ("alice", now, Usage(1, 2, 0, 3)), ("alice", JANUARY, Usage(1, 1, 0, 2)))
    rows = orjson.loads(cli.ok("usage", "--json"))
    assert [(row["month"], row["total_tokens"]) for row in rows] == [(now.strftime("%Y-%m"), 3)]


def test_usage_of_an_empty_month(cli: Cli) -> None:
    assert cli.ok("usage", "--month", "1999-12", "--json") == "[]\n"
    assert cli.ok("usage", "--month", "1999-12").split() == [
        "user",
        "requests",
        "prompt",
        "completion",
        "total",
        "estimated",
    ]


@pytest.mark.parametrize("month", ["2024-13", "2024-1", "24-01", "2024/01", "January", "2024-01-01", ""])
def test_usage_month_must_be_yyyy_mm(cli: Cli, month: str) -> None:
    assert cli.fails("usage", "--month", month, code=2) == "Error: Invalid value for --month: expected YYYY-MM"


def test_version_and_help(cli: Cli) -> None:
    assert "version 0.1.0" in cli.ok("--version")
    assert "users" in cli.ok("--help")
    assert "--litellm-key" in cli.ok("users", "add", "--help")


def test_unknown_command_is_one_line(cli: Cli) -> None:
    assert cli.fails("frobnicate", code=2) == "Error: No such command 'frobnicate'."


def test_configuration_error_is_one_line(cli: Cli) -> None:
    line = cli.fails("users", "list", RATE_LIMIT_AGENT="5/fortnight", AGENT_SECRET_KEY=SECRET, code=1)
    assert line == "Error: configuration: RATE_LIMIT_AGENT: unknown unit 'fortnight'; use second, minute, hour or day"


def test_unreachable_database_is_one_line() -> None:
    cli = Cli(DATABASE_URL="postgresql://postgres:pw-not-shown@127.0.0.1:1/test")
    line = cli.fails("users", "list", code=1)
    assert line == "Error: database: ConnectionRefusedError: cannot reach DATABASE_URL"


def test_missing_postgres_database_is_one_line(postgres_url: str) -> None:
    missing = postgres_url.replace("/test?", "/no_such_database_x?")
    assert "/no_such_database_x?" in missing
    line = Cli(DATABASE_URL=missing).fails("users", "list", code=1)
    assert line == 'Error: database: database "no_such_database_x" does not exist'


def test_cli_on_postgresql(postgres_url: str) -> None:
    cli = Cli(DATABASE_URL=postgres_url)
    cli.ok("users", "add", "alice", "--litellm-key", KEY, "--allowed-models", "gpt-4o", "--monthly-limit", "10")
    assert cli.fails("users", "add", "alice", "--litellm-key", KEY) == "Error: user alice exists; use `users set`"
    cli.ok("users", "set", "alice", "--all-models", "--litellm-key", OTHER_KEY)
    shown = cli.ok("users", "show", "alice")
    assert "allowed models: (all)\n" in shown
    assert "monthly limit:  10\n" in shown
    assert "litellm key:    sk-…3210\n" in shown
    assert OTHER_KEY not in cli("users", "list").output

    add_calls(postgres_url, ("alice", JANUARY, Usage(100, 20, 0, 120)), ("alice", JANUARY, None))
    rows = orjson.loads(cli.ok("usage", "--month", "2024-01", "--json"))
    assert [(r["user_id"], r["requests"], r["total_tokens"], r["estimated_requests"]) for r in rows] == [
        ("alice", 2, 220, 1)
    ]

    cli.ok("users", "remove", "alice")
    assert cli.fails("users", "show", "alice") == "Error: no user alice"


def test_changes_are_announced_on_redis(cli: Cli, redis_url: str) -> None:
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(INVALIDATION_CHANNEL)
    try:
        confirmed = pubsub.get_message(timeout=2.0)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        added = cli.ok("users", "add", user_id, "--litellm-key", KEY, REDIS_URL=redis_url)
        assert added == f"added {user_id}: takes effect now on every instance (Redis)\n"
        cli.ok("users", "set", user_id, "--no-limit", REDIS_URL=redis_url)
        cli.ok("users", "remove", user_id, REDIS_URL=redis_url)
        cli.fails("users", "remove", user_id, REDIS_URL=redis_url)  # nothing changed, nothing announced

        announced = 0
        deadline = time.monotonic() + 2
        while announced < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message["data"] == user_id.encode():
                announced += 1
        assert announced == 3
        extra = pubsub.get_message(timeout=0.1)
        assert extra is None or extra["data"] != user_id.encode()
    finally:
        pubsub.close()
        client.close()


def test_unreachable_redis_warns_but_the_change_is_made(cli: Cli) -> None:
    result = cli("users", "add", "alice", "--litellm-key", KEY, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.exit_code == 0
    assert result.stdout == "added alice" + SOON
    assert result.stderr == "warning: could not reach REDIS_URL; gateways read the change from the database\n"
    assert "sk-…cdef" in cli.ok("users", "show", "alice")


def test_the_default_database_is_the_same_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = Cli(XDG_DATA_HOME=str(tmp_path / "data"))  # no DATABASE_URL: the default
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    cli.ok("users", "add", "alice", "--litellm-key", KEY)
    monkeypatch.chdir(tmp_path / "two")
    assert "alice" in cli.ok("users", "list")
    assert (tmp_path / "data" / "agent-gateway" / "gateway.db").exists()
    assert not list((tmp_path / "one").iterdir()) and not list((tmp_path / "two").iterdir())


def test_a_user_added_in_one_folder_is_served_by_a_gateway_started_in_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, litellm: FakeLiteLLM
) -> None:
    """The installed command and the server on nothing but defaults: both find ~/.local/share/agent-gateway."""
    for name in {*settings_variables(), "XDG_DATA_HOME"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    user_id = new_user()
    command = Path(sys.executable).with_name("agent-gateway")
    added = subprocess.run(
        [command, "users", "add", user_id, "--litellm-key", KEY], cwd=tmp_path / "one", capture_output=True, text=True
    )
    assert added.returncode == 0 and added.stdout == f"added {user_id}" + SOON, added.stderr
    assert (tmp_path / "me" / ".local" / "share" / "agent-gateway" / "gateway.db").exists()

    env = {"AGENT_SECRET_KEY": SECRET, "LITELLM_BASE_URL": litellm.url, "SHUTDOWN_GRACE_SECONDS": "5"}
    gateway = GatewayProcess(env, tmp_path / "two").start()
    try:
        with gateway.client(user_id, api_key=SECRET) as client:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert litellm.for_user(user_id)[-1].headers["Authorization"] == f"Bearer {KEY}"  # the CLI's key
    finally:
        assert gateway.terminate() == 0
