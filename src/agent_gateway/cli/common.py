"""What every command shares: the environment, a database to work on, one-line errors, tables."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click
import sqlalchemy.exc

from agent_gateway.errors import GatewayError, InvalidField, NoSuchUser, UserExists
from agent_gateway.ops.users import checked_id
from agent_gateway.settings import ConfigError, Settings, load_settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyUnreadable
from agent_gateway.stores.postgrest import ProfileSourceError

T = TypeVar("T")
_OPTIONS = {"id": "'USER_ID'", "user_id": "'USER_ID'"}  # any other field is the option of its name


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException("\n".join(f"configuration: {line}" for line in str(exc).splitlines())) from None


def checked(check: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback from one of ops/users.py's checks: its rule, in click's words."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except InvalidField as exc:
            raise click.BadParameter(exc.rule) from None

    return callback


user_id_argument = checked(checked_id)


def run(work: Callable[[Settings, Database], Coroutine[Any, Any, T]], user_id: str | None = None) -> T:
    """`work` on the configured database; every failure one line (`user_id` names the user in it)."""
    config = settings()

    async def main() -> T:
        database = Database(config.database_url)
        try:
            await database.start()
            return await work(config, database)
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
    except InvalidField as exc:
        hint = _OPTIONS.get(exc.param or "", f"'--{(exc.param or '').replace('_', '-')}'")
        raise click.BadParameter(exc.rule, param_hint=hint) from None
    except NoSuchUser:
        raise click.ClickException(f"no user {user_id}") from None
    except UserExists:
        raise click.ClickException(f"user {user_id} exists; use `users set`") from None
    except GatewayError as exc:  # LiteLLM refused or could not be reached; a rule of the users API
        raise click.ClickException(str(exc)) from None
    except ProfileSourceError as exc:  # Supabase's PostgREST, when profiles live there (no key in the text)
        raise click.ClickException(f"supabase: {exc}") from None


class OneLineErrors(click.Group):
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


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
