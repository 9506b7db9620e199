"""The commands besides `users` (cli/users.py): serve, token, keys, usage, check."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import click
import orjson

from agent_gateway.auth.agent_tokens import derive_token
from agent_gateway.cli.common import OneLineErrors, run, settings, table, user_id_argument
from agent_gateway.cli.users import announce, say_reach, users
from agent_gateway.domain import this_month
from agent_gateway.settings import Settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher, new_key
from agent_gateway.stores.ledger import Ledger
from agent_gateway.stores.profiles import ProfileStore
from agent_gateway.stores.token_versions import TokenVersions


@click.group(cls=OneLineErrors)
@click.version_option(package_name="agent-gateway")
def main() -> None:
    """Agent Gateway: per-user LiteLLM keys, limits and metering for AI agents."""


@main.command()
def serve() -> int:
    """Serve on HOST:PORT (default 127.0.0.1:8000)."""
    from agent_gateway.server import serve as run_server

    return run_server(settings())


main.add_command(users)


@main.command()
@click.argument("user_id", callback=user_id_argument)
@click.option("--revoke", is_flag=True, help="Refuse every token issued so far; print a new one.")
def token(user_id: str, revoke: bool) -> None:
    """Print USER_ID's agent token (it opens that user only; AGENT_TOKEN_KEY derives it)."""
    keys = settings().token_keys
    if not keys:
        raise click.ClickException("AGENT_TOKEN_KEY is not set")

    async def version(config: Settings, database: Database) -> tuple[int, bool]:
        versions = TokenVersions(database)
        if not revoke:
            return await versions.issuing(user_id), False
        return await versions.revoke(user_id), await announce(config, user_id)

    issued, told = run(version)
    click.echo(derive_token(keys[0], user_id, issued))
    if revoke:  # on stderr: stdout holds the token alone
        say_reach(settings(), "older tokens refused: ", told, err=True)


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
    if not settings().key_encryption_key:
        raise click.ClickException("KEY_ENCRYPTION_KEY is not set")

    async def reseal(config: Settings, database: Database) -> int:
        return await ProfileStore(database, KeyCipher(config.key_encryption_keys)).reseal_keys()

    click.echo(f"resealed {run(reseal)} keys")


@main.command()
@click.option("--user", "user_id", callback=user_id_argument, help="One user; default all.")
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

    async def totals(_config: Settings, database: Database) -> list[dict[str, Any]]:
        return await Ledger(database).month_totals(month, user_id)

    rows = run(totals)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    columns = ["user_id", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests"]
    table(["user", "requests", "prompt", "completion", "total", "estimated"], [[r[c] for c in columns] for r in rows])


@main.command()
def check() -> None:
    """Validate the configuration and reach every configured dependency."""
    from agent_gateway.app import Platform

    config = settings()
    platform = Platform(config)

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
    secret = bool(config.agent_secret_key or config.agent_token_key)
    if not secret:
        click.echo(f"{'agents':10}{'missing':16}AGENT_SECRET_KEY is not set: every agent call would be refused (401)")
    problems = [
        *(["a dependency is not ok"] if report["status"] != "ok" else []),
        *([] if secret else ["no agent secret"]),
    ]
    if problems:
        raise click.ClickException("; ".join(problems))
