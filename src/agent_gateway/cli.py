"""`agent-gateway`: serve, manage user profiles, issue agent tokens, read usage (SPEC §7).

Reads the same environment as the server. Every command exits 0 on success, else non-zero
with one line on stderr. Keys are shown masked.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
import orjson
import sqlalchemy.exc

from agent_gateway.settings import ConfigError, Settings, load_settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.profiles import USER_ID, Profile, ProfileStore, mask_key
from agent_gateway.tokens import derive_token

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException("\n".join(f"configuration: {line}" for line in str(exc).splitlines())) from None


def _user_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not USER_ID.match(value):
        raise click.BadParameter("must match ^[A-Za-z0-9_-]{1,128}$")
    return value


def _models(_ctx: click.Context, _param: click.Parameter, value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    models = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not models:
        raise click.BadParameter("name at least one model, or use --all-models")
    return models


def _run(work: Callable[[Settings, Database], Coroutine[Any, Any, T]]) -> T:
    settings = _settings()

    async def main() -> T:
        database = Database(settings.database_url)
        try:
            await database.start()
            return await work(settings, database)
        finally:
            await database.close()

    try:
        return asyncio.run(main())
    except (OSError, ConnectionError) as exc:
        raise click.ClickException(f"database: {type(exc).__name__}: cannot reach DATABASE_URL") from None
    except sqlalchemy.exc.DBAPIError as exc:
        # The driver's own first line ('database "x" does not exist'), never SQLAlchemy's text with the statement.
        reason = (str(exc.orig).splitlines() or [type(exc.orig).__name__])[0]
        raise click.ClickException(f"database: {reason}") from None


async def _announce(settings: Settings, user_id: str) -> None:
    """Tell running gateways (through Redis) to drop their cached profile of `user_id`."""
    if not settings.redis_url:
        return
    from agent_gateway.app import connect_redis  # the server's modules load only when there is Redis to tell
    from agent_gateway.stores.profile_cache import publish_change

    redis = connect_redis(settings, timeout=2.0)
    if redis is None:
        return
    try:
        await publish_change(redis, user_id)
    except Exception:
        click.echo("warning: could not reach REDIS_URL; gateways see the change within 60 s", err=True)
    finally:
        await redis.aclose()


class _OneLineErrors(click.Group):
    """Failures end as `Error: ...` on stderr, one line per mistake, without click's usage banner (SPEC §7)."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            for line in exc.format_message().splitlines():
                click.echo(f"Error: {line}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="agent-gateway")
def main() -> None:
    """Agent Gateway: per-user LiteLLM keys, limits and metering for AI agents."""


@main.command()
def serve() -> None:
    """Serve on HOST:PORT (default 127.0.0.1:8000)."""
    from agent_gateway.server import serve as run_server

    run_server(_settings())


@main.group()
def users() -> None:
    """Add, change, list and remove user profiles."""


@users.command("add")
@click.argument("user_id", callback=_user_id)
@click.option("--litellm-key", required=True, help="The user's LiteLLM virtual key.")
@click.option("--allowed-models", callback=_models, help="Comma-separated; default all.")
@click.option("--monthly-limit", type=click.IntRange(min=0), help="Tokens per calendar month (UTC).")
def users_add(user_id: str, litellm_key: str, allowed_models: frozenset[str] | None, monthly_limit: int | None) -> None:
    """Add USER_ID with its LiteLLM key."""
    profile = Profile(user_id, litellm_key, allowed_models, monthly_limit)

    async def add(settings: Settings, database: Database) -> bool:
        added = await ProfileStore(database).add(profile)
        if added:
            await _announce(settings, user_id)
        return added

    if not _run(add):
        raise click.ClickException(f"user {user_id} exists; use `users set`")
    click.echo(f"added {user_id}")


@users.command("set")
@click.argument("user_id", callback=_user_id)
@click.option("--litellm-key", help="A new LiteLLM virtual key.")
@click.option("--allowed-models", callback=_models, help="Comma-separated allow-list.")
@click.option("--all-models", is_flag=True, help="Allow every model.")
@click.option("--monthly-limit", type=click.IntRange(min=0), help="Tokens per calendar month (UTC).")
@click.option("--no-limit", is_flag=True, help="Remove the monthly limit.")
def users_set(
    user_id: str,
    litellm_key: str | None,
    allowed_models: frozenset[str] | None,
    all_models: bool,
    monthly_limit: int | None,
    no_limit: bool,
) -> None:
    """Change USER_ID's key, allowed models or monthly limit."""
    if allowed_models is not None and all_models:
        raise click.UsageError("--allowed-models and --all-models exclude each other")
    if monthly_limit is not None and no_limit:
        raise click.UsageError("--monthly-limit and --no-limit exclude each other")
    changes: dict[str, Any] = {}
    if litellm_key is not None:
        changes["litellm_key"] = litellm_key
    if allowed_models is not None or all_models:
        changes["allowed_models"] = allowed_models
    if monthly_limit is not None or no_limit:
        changes["monthly_limit"] = monthly_limit
    if not changes:
        raise click.UsageError("nothing to change")

    async def update(settings: Settings, database: Database) -> bool:
        updated = await ProfileStore(database).update(user_id, **changes)
        if updated:
            await _announce(settings, user_id)
        return updated

    if not _run(update):
        raise click.ClickException(f"no user {user_id}")
    click.echo(f"updated {user_id}")


@users.command("remove")
@click.argument("user_id", callback=_user_id)
def users_remove(user_id: str) -> None:
    """Remove USER_ID (its ledger rows stay)."""

    async def remove(settings: Settings, database: Database) -> bool:
        removed = await ProfileStore(database).remove(user_id)
        if removed:
            await _announce(settings, user_id)
        return removed

    if not _run(remove):
        raise click.ClickException(f"no user {user_id}")
    click.echo(f"removed {user_id}")


@users.command("list")
def users_list() -> None:
    """All users, keys masked."""

    async def fetch(_settings: Settings, database: Database) -> list[Profile]:
        return await ProfileStore(database).list()

    _table(["user", "litellm key", "allowed models", "monthly limit"], [_profile_row(p) for p in _run(fetch)])


@users.command("show")
@click.argument("user_id", callback=_user_id)
def users_show(user_id: str) -> None:
    """One user, key masked."""

    async def fetch(_settings: Settings, database: Database) -> Profile | None:
        return await ProfileStore(database).get(user_id)

    profile = _run(fetch)
    if profile is None:
        raise click.ClickException(f"no user {user_id}")
    labels = ["user", "litellm key", "allowed models", "monthly limit"]
    for label, value in zip(labels, _profile_row(profile), strict=True):
        click.echo(f"{label + ':':16}{value}")
    if profile.created_at:
        click.echo(f"{'created:':16}{profile.created_at.isoformat()}")


@main.command()
@click.argument("user_id", callback=_user_id)
def token(user_id: str) -> None:
    """Print USER_ID's derived agent token (opens that user only)."""
    secrets = _settings().agent_secrets
    if not secrets:
        raise click.ClickException("AGENT_SECRET_KEY is not set")
    click.echo(derive_token(secrets[0], user_id))


@main.command()
@click.option("--user", "user_id", callback=_user_id, help="One user; default all.")
@click.option("--month", default=lambda: datetime.now(UTC).strftime("%Y-%m"), help="YYYY-MM (UTC); default now.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def usage(user_id: str | None, month: str, as_json: bool) -> None:
    """Token usage per user for a month, from the ledger."""
    try:
        # strptime alone takes "2024-1", which would match no ledger row (they hold "2024-01")
        if len(month) != 7:
            raise ValueError(month)
        datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise click.BadParameter("expected YYYY-MM", param_hint="--month") from None

    async def totals(_settings: Settings, database: Database) -> list[dict[str, Any]]:
        return await Ledger(database).month_totals(month, user_id)

    rows = _run(totals)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    columns = ["user_id", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests"]
    _table(["user", "requests", "prompt", "completion", "total", "estimated"], [[r[c] for c in columns] for r in rows])


@main.command()
def check() -> None:
    """Validate the configuration and reach every configured dependency."""
    from agent_gateway.app import Gateway
    from agent_gateway.health import check_health

    gateway = Gateway(_settings())

    async def run() -> dict[str, Any]:
        await gateway.database.start()
        await gateway.litellm.start()
        try:
            return await check_health(gateway)
        finally:
            await gateway.litellm.close()
            await gateway.database.close()
            if gateway.redis is not None:
                await gateway.redis.aclose()

    report = asyncio.run(run())
    for name, result in report["checks"].items():
        click.echo(f"{name:10}{result['status']:16}{result.get('reason', '')}")
    if report["status"] != "ok":
        raise click.ClickException("a dependency is not ok")


def _profile_row(profile: Profile) -> list[Any]:
    models = ",".join(sorted(profile.allowed_models)) if profile.allowed_models is not None else "(all)"
    limit = profile.monthly_limit if profile.monthly_limit is not None else "(none)"
    return [profile.id, mask_key(profile.litellm_key), models, limit]


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
