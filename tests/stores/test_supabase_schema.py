"""deploy/supabase/user_profiles.sql on a real PostgreSQL set up as a Supabase project is (its roles,
`auth.users`, `auth.uid()`): users read their own limits and never a key; the service key does all."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.faults.postgres import ThrowawayPostgres

pytestmark = pytest.mark.xdist_group("supabase_schema")  # one worker: one throwaway cluster, not two

MIGRATION = (Path(__file__).parents[2] / "deploy" / "supabase" / "user_profiles.sql").read_text()
# What every Supabase project has before its own migrations run (roles, the auth schema, auth.uid()).
SUPABASE = """
create role anon nologin;
create role authenticated nologin;
create role service_role nologin bypassrls;
create schema auth;
create table auth.users (id uuid primary key);
create function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid
$$;
grant usage on schema public, auth to anon, authenticated, service_role;
grant execute on function auth.uid() to anon, authenticated;
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayPostgres]:
    postgres = ThrowawayPostgres().start()  # roles are cluster-wide: never on the shared server
    yield postgres
    postgres.remove()


@pytest.fixture
async def project(cluster: ThrowawayPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(cluster.url)
    await conn.execute(SUPABASE)
    await conn.execute(MIGRATION)
    await conn.execute(MIGRATION)  # idempotent: a second run changes nothing and fails nothing
    yield conn
    await conn.execute("drop schema auth cascade; drop table if exists public.user_profiles")
    await conn.execute("drop owned by anon, authenticated, service_role; drop role anon, authenticated, service_role")
    await conn.close()


async def as_role(conn: asyncpg.Connection, role: str, sql: str, sub: str | None = None) -> list[asyncpg.Record]:
    """`sql` as PostgREST runs it for a request: the JWT's role, its claims as a setting."""
    async with conn.transaction():
        await conn.execute(f"set local role {role}")
        if sub is not None:
            await conn.execute("select set_config('request.jwt.claims', $1, true)", f'{{"sub": "{sub}"}}')
        return list(await conn.fetch(sql))


async def test_users_read_their_own_limits_and_never_a_key(project: asyncpg.Connection) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    await project.execute("insert into auth.users values ($1), ($2)", alice, bob)
    rows = (
        "insert into public.user_profiles (id, litellm_key_id, allowed_models, monthly_limit) values ($1, $2, $3, $4)"
    )
    await project.execute(rows, alice, "sk-alice-key", ["gpt-4o-mini"], 1000)
    await project.execute(rows, bob, "sk-bob-key", None, None)

    own = await as_role(project, "authenticated", "select id, allowed_models, monthly_limit from user_profiles", alice)
    assert [(str(r["id"]), r["allowed_models"], r["monthly_limit"]) for r in own] == [(alice, ["gpt-4o-mini"], 1000)]
    for sql in ("select litellm_key_id from user_profiles", "select * from user_profiles"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_role(project, "authenticated", sql, alice)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_role(
            project, "authenticated", f"update user_profiles set monthly_limit = null where id = '{alice}'", alice
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_role(project, "anon", "select id from user_profiles")


async def test_the_service_key_reads_and_writes_every_profile(project: asyncpg.Connection) -> None:
    alice = str(uuid.uuid4())
    await project.execute("insert into auth.users values ($1)", alice)
    await as_role(
        project, "service_role", f"insert into user_profiles (id, litellm_key_id) values ('{alice}', 'sk-made')"
    )
    rows = await as_role(project, "service_role", "select * from user_profiles")
    assert [(str(r["id"]), r["litellm_key_id"], r["allowed_models"]) for r in rows] == [(alice, "sk-made", None)]
    await as_role(project, "service_role", f"delete from user_profiles where id = '{alice}'")
    with pytest.raises(asyncpg.CheckViolationError):  # a limit is a count of tokens
        await project.execute("insert into public.user_profiles values ($1, 'k', null, -1)", alice)
    await project.execute("insert into public.user_profiles (id, litellm_key_id) values ($1, 'k')", alice)
    await project.execute("delete from auth.users where id = $1", alice)  # a deleted account takes its profile
    assert await project.fetchval("select count(*) from public.user_profiles") == 0
