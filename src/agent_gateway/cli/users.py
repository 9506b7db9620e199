"""`agent-gateway users …`: ops/users.py's rules at the command line, each change said with how
soon running gateways apply it: now on every instance (Redis), or within a poll of the change log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from agent_gateway.cli.common import checked, run, table, user_id_argument
from agent_gateway.domain import Profile, mask_key
from agent_gateway.ops.users import KEEP, Changed, Keep, Users, checked_limit, checked_models, users_for
from agent_gateway.settings import Settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.profile_changes import ChangeNotices, reach
from agent_gateway.upstream.client import UpstreamClient

T = TypeVar("T")


def _run_users(work: Callable[[Users], Awaitable[T]], user_id: str | None = None) -> tuple[Settings, T]:
    """`work` on this environment's users: with Redis to tell gateways at once, LiteLLM to make keys."""

    async def with_users(settings: Settings, database: Database) -> tuple[Settings, T]:
        from agent_gateway.limits.redis import connect_redis

        redis = connect_redis(settings, timeout=2.0)
        litellm = UpstreamClient("litellm", settings.litellm_root_url) if settings.litellm_master_key else None
        supabase = (
            UpstreamClient("supabase", settings.supabase_url)
            if settings.profiles_from_postgrest and settings.supabase_url
            else None
        )
        clients = [client for client in (litellm, supabase) if client is not None]
        try:
            for client in clients:
                await client.start()
            return settings, await work(users_for(settings, database, ChangeNotices(redis), litellm, supabase))
        finally:
            for client in clients:
                await client.close()
            if redis is not None:
                await redis.aclose()

    return run(with_users, user_id)


def _change(what: Callable[[Changed], str], user_id: str, work: Callable[[Users], Awaitable[Changed]]) -> None:
    settings, changed = _run_users(work, user_id)
    say_reach(settings, f"{what(changed)}: ", changed.told_now)


def say_reach(settings: Settings, prefix: str, told_now: bool, err: bool = False) -> None:
    """How soon running gateways apply a change (and why not at once when Redis could not be told)."""
    if settings.redis_url and not told_now:
        click.echo("warning: could not reach REDIS_URL; gateways read the change from the database", err=True)
    click.echo(prefix + reach(told_now, settings.profile_poll_seconds), err=err)


async def announce(settings: Settings, user_id: str) -> bool:
    """Publish a change to `user_id` on Redis, if there is one; True when every gateway was told."""
    from agent_gateway.limits.redis import connect_redis

    redis = connect_redis(settings, timeout=2.0)
    try:
        return await ChangeNotices(redis).send(user_id)
    finally:
        if redis is not None:
            await redis.aclose()


_models = checked(lambda value: checked_models(value.split(",")))
_limit = checked(checked_limit)


@click.group()
def users() -> None:
    """Add, change, list and remove users; with LITELLM_MASTER_KEY, their LiteLLM keys too."""


@users.command("add")
@click.argument("user_id", callback=user_id_argument)
@click.option("--litellm-key", help="The user's LiteLLM virtual key (made by the gateway with LITELLM_MASTER_KEY).")
@click.option("--allowed-models", callback=_models, help="Comma-separated; default all.")
@click.option("--monthly-limit", type=int, callback=_limit, help="Tokens per calendar month (UTC).")
def users_add(
    user_id: str, litellm_key: str | None, allowed_models: frozenset[str] | None, monthly_limit: int | None
) -> None:
    """Add USER_ID with its LiteLLM key."""

    def added(changed: Changed) -> str:
        if litellm_key is not None or changed.user is None:
            return f"added {user_id}"
        return f"added {user_id} with a new LiteLLM key ({mask_key(changed.user.litellm_key)})"

    _change(
        added,
        user_id,
        lambda users: users.create(
            user_id, litellm_key=litellm_key, allowed_models=allowed_models, monthly_limit=monthly_limit
        ),
    )


@users.command("set")
@click.argument("user_id", callback=user_id_argument)
@click.option("--litellm-key", help="A new LiteLLM virtual key (with LITELLM_MASTER_KEY: `users rotate`).")
@click.option("--allowed-models", callback=_models, help="Comma-separated allow-list.")
@click.option("--all-models", is_flag=True, help="Allow every model.")
@click.option("--monthly-limit", type=int, callback=_limit, help="Tokens per calendar month (UTC).")
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
    key: str | Keep = litellm_key if litellm_key is not None else KEEP
    models: frozenset[str] | None | Keep = allowed_models if allowed_models is not None or all_models else KEEP
    limit: int | None | Keep = monthly_limit if monthly_limit is not None or no_limit else KEEP
    if key is KEEP and models is KEEP and limit is KEEP:
        raise click.UsageError("nothing to change")
    _change(
        lambda _: f"updated {user_id}",
        user_id,
        lambda users: users.update(user_id, litellm_key=key, allowed_models=models, monthly_limit=limit),
    )


@users.command("rotate")
@click.argument("user_id", callback=user_id_argument)
def users_rotate(user_id: str) -> None:
    """Give USER_ID a new LiteLLM key and delete the old one (needs LITELLM_MASTER_KEY)."""

    def rotated(changed: Changed) -> str:
        hint = mask_key(changed.user.litellm_key) if changed.user is not None else "?"
        return f"rotated {user_id}'s LiteLLM key (now {hint})"

    _change(rotated, user_id, lambda users: users.rotate_key(user_id))


@users.command("remove")
@click.argument("user_id", callback=user_id_argument)
def users_remove(user_id: str) -> None:
    """Remove USER_ID (its ledger rows stay; with LITELLM_MASTER_KEY its LiteLLM key is deleted)."""
    _change(lambda _: f"removed {user_id}", user_id, lambda users: users.remove(user_id))


@users.command("list")
def users_list() -> None:
    """All users, keys masked."""
    _, every = _run_users(lambda users: users.every())
    table(["user", "litellm key", "allowed models", "monthly limit"], [_row(profile) for profile in every])


@users.command("show")
@click.argument("user_id", callback=user_id_argument)
def users_show(user_id: str) -> None:
    """One user, key masked."""
    _, profile = _run_users(lambda users: users.get(user_id), user_id)
    labels = ["user", "litellm key", "allowed models", "monthly limit"]
    for label, value in zip(labels, _row(profile), strict=True):
        click.echo(f"{label + ':':16}{value}")
    if profile.created_at:
        click.echo(f"{'created:':16}{profile.created_at.isoformat()}")


def _row(profile: Profile) -> list[Any]:
    models = ",".join(sorted(profile.allowed_models)) if profile.allowed_models is not None else "(all)"
    limit = profile.monthly_limit if profile.monthly_limit is not None else "(none)"
    return [profile.id, mask_key(profile.litellm_key), models, limit]
