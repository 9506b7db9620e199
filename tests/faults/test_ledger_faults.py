"""The usage ledger when its database goes away: clear errors, quiet logs, no row lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import add_profile, new_user, run, wait_for_rows
from tests.faults.postgres import ThrowawayPostgres

pytestmark = pytest.mark.faults  # real processes killed and servers stopped: `-m "not faults"` skips them

ADMIN_KEY = "fault-suite-admin-key"


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    yield server
    server.remove()


def test_an_outage_is_a_503_for_the_admin_api_one_log_line_each_way_and_no_lost_row(
    gateway_factory: Any, postgres: ThrowawayPostgres
) -> None:
    # The profile first: added after the start, its change-log entry could make the gateway forget
    # the profile it cached just before the outage (the log is polled every 0.5 s).
    user_id = new_user()
    run(add_profile(postgres.url, user_id))
    gw = gateway_factory(DATABASE_URL=postgres.url, ADMIN_API_KEY=ADMIN_KEY)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    usage = f"{gw.url}/api/v1/admin/usage"
    client = gw.client(user_id)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])

    postgres.stop()
    # The profile is cached: calls go on and their rows wait in memory for the database.
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    answers = [httpx.get(usage, headers=admin, params={"user_id": user_id}) for _ in range(5)]
    time.sleep(1.5)  # seven failed flushes
    assert {answer.status_code for answer in answers} == {503}
    error = answers[0].json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "database_unavailable")
    assert answers[0].headers["retry-after"] == "5"
    logs = gw.logs()
    assert logs.count("usage database unreachable") == 1 and "Traceback" not in logs

    postgres.start()
    rows = run(wait_for_rows(postgres.url, user_id, 4))
    assert [row["state"] for row in rows] == ["settled"] * 4 and not any(row["estimated"] for row in rows)
    answer = httpx.get(usage, headers=admin, params={"user_id": user_id})
    assert answer.status_code == 200 and answer.json()["requests"] == 4
    assert gw.logs().count("usage database reachable again") == 1


def test_a_shutdown_while_the_database_is_down_keeps_every_row_for_the_next_start(
    gateway_factory: Any, postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": postgres.url, "LEDGER_OUTBOX": str(tmp_path / "outbox.jsonl")}
    user_id = new_user()
    run(add_profile(postgres.url, user_id))  # before the start: see the first test
    first = gateway_factory(**env)
    client = first.client(user_id)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    client.chat.completions.create(**chat)  # the profile is cached from here on
    postgres.stop()
    for _ in range(10):
        client.chat.completions.create(**chat)

    assert first.terminate() == 3  # not a clean exit: rows wait on disk, and the log says where
    assert first.logs().count("usage rows left in the outbox") == 1
    assert list(tmp_path.glob("outbox.jsonl*"))  # the file, or a replay's claim of it

    postgres.start()
    second = gateway_factory(**env)
    rows = run(wait_for_rows(postgres.url, user_id, 11))
    assert len(rows) == 11 and all(row["state"] == "settled" and row["total_tokens"] == 18 for row in rows)
    assert not list(tmp_path.glob("outbox.jsonl*"))
    assert "wrote rows an earlier process left in the outbox" in second.logs()


def test_a_crash_during_an_outage_loses_no_row(
    gateway_factory: Any, postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": postgres.url, "LEDGER_OUTBOX": str(tmp_path / "outbox.jsonl")}
    user_id = new_user()
    run(add_profile(postgres.url, user_id))  # before the start: see the first test
    first = gateway_factory(**env)
    client = first.client(user_id)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    client.chat.completions.create(**chat)
    postgres.stop()
    for _ in range(5):
        client.chat.completions.create(**chat)
    time.sleep(0.6)  # a flush fails and spills the rows to disk
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    postgres.start()
    gateway_factory(**env)
    rows = run(wait_for_rows(postgres.url, user_id, 6))
    assert len(rows) == 6 and all(row["total_tokens"] == 18 and not row["estimated"] for row in rows)
