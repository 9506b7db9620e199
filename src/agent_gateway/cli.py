"""`agent-gateway`: serve, manage user profiles, issue agent tokens, read usage (SPEC §7).

Reads the same environment as the server. Every command exits 0 on success, else non-zero
with one line on stderr. Keys are shown masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click
import orjson
import sqlalchemy.exc

from agent_gateway.auth.agent_tokens import derive_token
from agent_gateway.domain import USER_ID, USER_ID_PATTERN, Profile, canonical_user_id, mask_key, this_month
from agent_gateway.settings import ConfigError, Settings, load_settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher, KeyUnreadable, new_key
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.profiles import ProfileStore
from agent_gateway.stores.token_versions import TokenVersions

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException("\n".join(f"configuration: {line}" for line in str(exc).splitlines())) from None


def _user_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not USER_ID.match(value):
        raise click.BadParameter(f"must match {USER_ID_PATTERN}")
    return canonical_user_id(value) if value is not None else None


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
    except KeyUnreadable as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ConnectionError) as exc:
        raise click.ClickException(f"database: {type(exc).__name__}: cannot reach DATABASE_URL") from None
    except sqlalchemy.exc.DBAPIError as exc:
        # The driver's own first line ('database "x" does not exist'), never SQLAlchemy's text with the statement.
        reason = (str(exc.orig).splitlines() or [type(exc.orig).__name__])[0]
        raise click.ClickException(f"database: {reason}") from None


def _profiles(settings: Settings, database: Database) -> ProfileStore:
    return ProfileStore(database, KeyCipher(settings.key_encryption_keys))


async def _announce(settings: Settings, user_id: str) -> None:
    """Tell running gateways (through Redis) to drop their cached profile of `user_id`."""
    if not settings.redis_url:
        return
    from agent_gateway.limits.redis import connect_redis  # loaded only when there is Redis to tell
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
def serve() -> int:
    """Serve on HOST:PORT (default 127.0.0.1:8000)."""
    from agent_gateway.server import serve as run_server

    return run_server(_settings())


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
        added = await _profiles(settings, database).add(profile)
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
        updated = await _profiles(settings, database).update(user_id, **changes)
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
        removed = await _profiles(settings, database).remove(user_id)
        if removed:
            await _announce(settings, user_id)
        return removed

    if not _run(remove):
        raise click.ClickException(f"no user {user_id}")
    click.echo(f"removed {user_id}")


@users.command("list")
def users_list() -> None:
    """All users, keys masked."""

    async def fetch(settings: Settings, database: Database) -> list[Profile]:
        return await _profiles(settings, database).list()

    _table(["user", "litellm key", "allowed models", "monthly limit"], [_profile_row(p) for p in _run(fetch)])


@users.command("show")
@click.argument("user_id", callback=_user_id)
def users_show(user_id: str) -> None:
    """One user, key masked."""

    async def fetch(settings: Settings, database: Database) -> Profile | None:
        return await _profiles(settings, database).get(user_id)

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
@click.option("--revoke", is_flag=True, help="Refuse every token issued so far; print a new one.")
def token(user_id: str, revoke: bool) -> None:
    """Print USER_ID's agent token (it opens that user only; AGENT_TOKEN_KEY derives it)."""
    keys = _settings().token_keys
    if not keys:
        raise click.ClickException("AGENT_TOKEN_KEY is not set")

    async def version(settings: Settings, database: Database) -> int:
        versions = TokenVersions(database)
        if not revoke:
            return await versions.issuing(user_id)
        issued = await versions.revoke(user_id)
        await _announce(settings, user_id)
        return issued

    click.echo(derive_token(keys[0], user_id, _run(version)))


@main.group()
def keys() -> None:
    """The key that seals stored LiteLLM keys (KEY_ENCRYPTION_KEY): make one, roll to a new one."""


@keys.command("new")
def keys_new() -> None:
    """Print a new KEY_ENCRYPTION_KEY value."""
    click.echo(new_key())


@keys.command("rotate")
def keys_rotate() -> None:
    """Seal every stored LiteLLM key under the first KEY_ENCRYPTION_KEY (plain ones too)."""
    if not _settings().key_encryption_key:
        raise click.ClickException("KEY_ENCRYPTION_KEY is not set")

    async def reseal(settings: Settings, database: Database) -> int:
        return await _profiles(settings, database).reseal_keys()

    click.echo(f"resealed {_run(reseal)} keys")


@main.command()
@click.option("--user", "user_id", callback=_user_id, help="One user; default all.")
@click.option("--month", default=this_month, help="YYYY-MM (UTC); default now.")
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
    from agent_gateway.app import Platform

    settings = _settings()
    platform = Platform(settings)

    async def run() -> dict[str, Any]:
        try:
            with contextlib.suppress(Exception):  # its own probe below says why, in one line
                await platform.database.start()
            for client in platform.clients:  # every client it probes, as the server starts them
                await client.start()
            return await platform.health_checks().report()
        finally:
            for client in platform.clients:
                await client.close()
            if platform.redis is not None:
                await platform.redis.aclose()
            await platform.database.close()

    report = asyncio.run(run())
    for name, result in report["checks"].items():
        click.echo(f"{name:10}{result['status']:16}{result.get('reason', '')}")
    secret = bool(settings.agent_secret_key or settings.agent_token_key)
    if not secret:
        click.echo(f"{'agents':10}{'missing':16}AGENT_SECRET_KEY is not set: every agent call would be refused (401)")
    problems = [
        *(["a dependency is not ok"] if report["status"] != "ok" else []),
        *([] if secret else ["no agent secret"]),
    ]
    if problems:
        raise click.ClickException("; ".join(problems))


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
