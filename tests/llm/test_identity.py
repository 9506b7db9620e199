"""One user, one identity: a UUID in any spelling keys the same limits, budget, ledger and profile."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
import sqlalchemy as sa

from agent_gateway.stores.database import Database
from tests.conftest import SECRET, run, wait_for_rows


async def uuid_profiles_table(database_url: str, user_id: str) -> None:
    """The platform's own `user_profiles`, keyed by a PostgreSQL `uuid` as Supabase's is."""
    database = Database(database_url)
    try:
        async with database.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{database.schema}"'))
            await conn.execute(
                sa.text(
                    "CREATE TABLE user_profiles (id uuid PRIMARY KEY, litellm_key_id text NOT NULL, "
                    "allowed_models text[], monthly_limit bigint, created_at timestamptz DEFAULT now())"
                )
            )
            await conn.execute(
                sa.text("INSERT INTO user_profiles (id, litellm_key_id, monthly_limit) VALUES (:id, :key, 1000000)"),
                {"id": user_id, "key": f"sk-{user_id}"},
            )
    finally:
        await database.close()


def test_every_spelling_of_a_uuid_is_the_same_user(gateway_factory: Any, postgres_url: str) -> None:
    user_id = str(uuid.uuid4())
    run(uuid_profiles_table(postgres_url, user_id))
    gw = gateway_factory(DATABASE_URL=postgres_url, RATE_LIMIT_AGENT="3/minute")
    spellings = [user_id, user_id.upper(), user_id.replace("-", ""), user_id.replace("-", "").upper()]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    statuses = Counter(
        httpx.post(
            f"{gw.agent_base(spellings[i % 4])}/chat/completions",
            headers={"Authorization": f"Bearer {SECRET}"},
            json=body,
        ).status_code
        for i in range(12)
    )
    assert statuses == Counter({200: 3, 429: 9})  # one rate limit, not four
    rows = run(wait_for_rows(postgres_url, user_id, 3))
    assert len(rows) == 3 and {row["user_id"] for row in rows} == {user_id}  # one ledger identity
