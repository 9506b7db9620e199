"""The usage ledger (SPEC §4): written at admission, settled at the end, batched, recovered after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent_gateway.domain import Usage, month_of
from agent_gateway.stores.database import Database
from agent_gateway.stores.instances import Instances
from agent_gateway.stores.ledger import Ledger, LedgerEntry
from agent_gateway.stores.outbox import Outbox

JANUARY = datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC)
FEBRUARY = datetime(2024, 2, 1, 0, 0, 1, tzinfo=UTC)


def call(
    user_id: str = "alice", estimate: int = 120, admitted_at: datetime | None = None, **fields: Any
) -> LedgerEntry:
    entry = LedgerEntry(
        user_id, fields.pop("route", "chat"), fields.pop("model", "gpt-4o"), fields.pop("request_id", None)
    )
    entry.usage = Usage(prompt_tokens=estimate)
    if admitted_at is not None:
        entry.admitted_at = admitted_at
    return entry


async def rows(database: Database) -> dict[str, dict[str, Any]]:
    async with database.connect() as conn:
        result = await conn.execute(sa.text("SELECT * FROM usage_ledger"))
        return {row["id"]: dict(row) for row in result.mappings().all()}


async def row(database: Database, entry: LedgerEntry) -> dict[str, Any]:
    return (await rows(database))[entry.id]


async def test_admitted_call_is_an_in_flight_row_with_its_estimate(database: Database) -> None:
    ledger = Ledger(database)
    entry = call(estimate=120, request_id="req-from-caller", model="gpt-4o-mini", route="responses")
    entry.reserved_tokens = 4096
    ledger.admit(entry)
    assert await rows(database) == {}  # batched: nothing written before a flush
    assert await ledger.flush() == 1

    written = await row(database, entry)
    assert written["id"] != "req-from-caller"  # our own key; the caller's id is stored beside it
    assert written["request_id"] == "req-from-caller"
    assert (written["user_id"], written["model"], written["route"]) == ("alice", "gpt-4o-mini", "responses")
    assert written["state"] == "in_flight"
    assert written["month"] == entry.admitted_at.strftime("%Y-%m")
    assert (written["prompt_tokens"], written["completion_tokens"], written["total_tokens"]) == (120, 0, 120)
    assert written["reserved_tokens"] == 4096
    assert written["estimated"]
    assert written["status"] is None
    assert written["finished_at"] is None
    assert written["admitted_at"] is not None


async def test_settled_call_has_the_real_usage(database: Database) -> None:
    ledger = Ledger(database)
    entry = call(estimate=120)
    ledger.admit(entry)
    await ledger.flush()

    usage = Usage(prompt_tokens=100, completion_tokens=30, cached_tokens=40, total_tokens=130)
    assert ledger.settle(entry, 200, usage)
    assert await ledger.flush() == 1

    written = await row(database, entry)
    assert written["state"] == "settled"
    assert written["status"] == 200
    assert (written["prompt_tokens"], written["completion_tokens"]) == (100, 30)
    assert (written["cached_tokens"], written["total_tokens"]) == (40, 130)
    assert not written["estimated"]
    assert written["finished_at"] is not None


async def test_a_call_that_ends_within_one_interval_is_one_settled_row(database: Database) -> None:
    ledger = Ledger(database)
    entry = call()
    ledger.admit(entry)
    ledger.settle(entry, 200, Usage(10, 5, 0, 15))
    assert await ledger.flush() == 1
    assert await ledger.flush() == 0
    assert [(r["state"], r["total_tokens"]) for r in (await rows(database)).values()] == [("settled", 15)]


async def test_settling_twice_changes_nothing(database: Database) -> None:
    ledger = Ledger(database)
    entry = call()
    ledger.admit(entry)
    assert ledger.settle(entry, 200, Usage(10, 5, 0, 15))
    await ledger.flush()

    assert not ledger.settle(entry, 502, Usage(999, 999, 0, 1998, estimated=True))
    assert entry.status == 200
    assert entry.usage.total_tokens == 15
    assert await ledger.flush() == 0
    written = await row(database, entry)
    assert (written["status"], written["total_tokens"], written["estimated"]) == (200, 15, False)


async def test_a_settled_row_is_never_turned_back(database: Database) -> None:
    """Another writer's stale in-flight copy of the row (same id) does not undo the settlement."""
    ledger = Ledger(database)
    entry = call()
    ledger.admit(entry)
    ledger.settle(entry, 200, Usage(10, 5, 0, 15))
    await ledger.flush()

    stale = call(estimate=500)
    stale.id = entry.id
    other = Ledger(database)
    other.admit(stale)
    await other.flush()
    written = await row(database, entry)
    assert (written["state"], written["status"], written["total_tokens"]) == ("settled", 200, 15)


async def test_pending_rows_are_written_on_close(database: Database) -> None:
    ledger = Ledger(database, flush_interval=3600)
    await ledger.start()
    settled, in_flight = call(user_id="alice"), call(user_id="bob", estimate=7)
    ledger.admit(settled)
    ledger.admit(in_flight)
    ledger.settle(settled, 200, Usage(10, 5, 0, 15))
    await asyncio.sleep(0)
    assert await rows(database) == {}

    await ledger.close()
    written = await rows(database)
    assert written[settled.id]["state"] == "settled"
    assert (written[in_flight.id]["state"], written[in_flight.id]["total_tokens"]) == ("in_flight", 7)


async def test_the_flusher_writes_in_the_background(database: Database) -> None:
    ledger = Ledger(database, flush_interval=0.02)
    await ledger.start()
    try:
        entry = call()
        ledger.admit(entry)
        ledger.settle(entry, 200, Usage(1, 2, 0, 3))
        deadline = time.monotonic() + 5
        while entry.id not in await rows(database):
            assert time.monotonic() < deadline, "the flusher wrote nothing within 5 s"
            await asyncio.sleep(0.02)
        assert (await row(database, entry))["state"] == "settled"
    finally:
        await ledger.close()


async def test_a_failed_write_loses_no_row(database: Database) -> None:
    ledger = Ledger(database)
    first = call(user_id="alice")
    ledger.admit(first)
    async with database.begin() as conn:
        await conn.execute(sa.text("DROP TABLE usage_ledger"))
    with pytest.raises((sa.exc.DBAPIError, sqlite3.Error)):  # SQLite is written through sqlite3 itself
        await ledger.flush()

    second = call(user_id="bob")
    ledger.admit(second)
    await database.start()  # the table is back
    assert await ledger.flush() == 2
    assert set(await rows(database)) == {first.id, second.id}


async def test_a_row_the_database_refuses_is_set_aside_and_holds_back_no_other(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database will never take (here a NOT NULL column left empty) used to fail its
    whole batch on every try, and every later row with it: billing stopped."""
    outbox = Outbox(tmp_path / "outbox.jsonl")
    ledger = Ledger(database, outbox)
    first, broken, last = call(user_id="alice"), call(user_id="bob"), call(user_id="carol")
    broken.route = None  # type: ignore[assignment]
    for entry in (first, broken, last):
        ledger.admit(entry)
    await ledger.flush()
    assert set(await rows(database)) == {first.id, last.id}
    assert outbox.refused is not None and broken.id in outbox.refused.read_text()
    assert "usage rows the database refuses were set aside" in caplog.text

    later = call(user_id="dave")
    ledger.admit(later)
    assert await ledger.flush() == 1
    assert later.id in await rows(database)


async def test_recover_settles_calls_left_in_flight_as_estimated(database: Database) -> None:
    crashed = Ledger(database)
    finished, unfinished = call(estimate=50), call(estimate=80)
    crashed.admit(finished)
    crashed.admit(unfinished)
    crashed.settle(finished, 200, Usage(40, 10, 0, 50))
    await crashed.flush()  # ... and the process dies without settling `unfinished`

    restarted = Ledger(database)
    assert await restarted.recover() == 1
    assert await restarted.recover() == 0
    written = await rows(database)
    recovered = written[unfinished.id]
    assert (recovered["state"], recovered["estimated"], recovered["total_tokens"]) == ("settled", True, 80)
    assert recovered["finished_at"] is not None
    assert (written[finished.id]["estimated"], written[finished.id]["total_tokens"]) == (False, 50)


async def test_real_usage_arriving_after_recovery_wins(database: Database) -> None:
    """Recovery ran while the call's process was in fact still alive: its settlement, late, replaces the estimate."""
    slow = Ledger(database)
    entry = call(estimate=80)
    slow.admit(entry)
    await slow.flush()
    assert await Ledger(database).recover() == 1

    slow.settle(entry, 200, Usage(70, 30, 0, 100))
    await slow.flush()
    written = await row(database, entry)
    assert (written["state"], written["status"], written["total_tokens"], written["estimated"]) == (
        "settled",
        200,
        100,
        False,
    )


async def test_start_recovers(database: Database) -> None:
    crashed = Ledger(database)
    entry = call()
    crashed.admit(entry)
    await crashed.flush()

    restarted = Ledger(database, flush_interval=3600)
    await restarted.start()
    await restarted.close()
    assert (await row(database, entry))["state"] == "settled"


async def test_recovery_leaves_the_calls_of_live_processes_alone(database: Database) -> None:
    """A process starting beside a live one does not settle the live one's calls: they still hold
    their reservations. Once the live one falls silent for three heartbeats, they are settled."""
    live = Ledger(database, instances=Instances(database, heartbeat=0.1))
    await live.instances.beat()
    entry = call(estimate=80)
    live.admit(entry)
    await live.flush()

    starting = Ledger(database, flush_interval=3600, instances=Instances(database, heartbeat=0.1))
    await starting.start()
    assert await starting.recover() == 0
    assert (await row(database, entry))["state"] == "in_flight"

    await asyncio.sleep(0.35)  # `live` says nothing for three heartbeats and more: it crashed
    assert await starting.recover() == 1
    settled = await row(database, entry)
    assert (settled["state"], settled["estimated"], settled["total_tokens"]) == ("settled", True, 80)
    await starting.close()


async def test_a_start_does_not_take_silence_for_death(database: Database) -> None:
    """Just after a database outage every live process looks silent: a process starting then
    settled their calls and freed their reservations (17,000 of 10,000 billed). Silence is for
    the heartbeat loop to judge, once its own beats have gone through that long."""
    live = Ledger(database, instances=Instances(database, heartbeat=0.05))
    await live.instances.beat()
    entry = call()
    live.admit(entry)
    await live.flush()
    await asyncio.sleep(0.3)  # the database was away: nobody could beat

    starting = Ledger(database, flush_interval=3600, instances=Instances(database, heartbeat=0.05))
    await starting.start()
    assert (await row(database, entry))["state"] == "in_flight"
    await starting.close()


async def test_each_process_is_judged_by_its_own_heartbeat(database: Database) -> None:
    """A process beating every 10 s is not dead to one beating every 50 ms after 0.3 s of silence."""
    slow = Ledger(database, instances=Instances(database, heartbeat=10.0))
    await slow.instances.beat()
    entry = call()
    slow.admit(entry)
    await slow.flush()
    quick = Ledger(database, instances=Instances(database, heartbeat=0.05))
    await quick.instances.beat()
    await asyncio.sleep(0.3)
    assert await quick.recover(unowned=True) == 0
    assert (await row(database, entry))["state"] == "in_flight"


async def test_a_live_process_settles_the_calls_of_a_crashed_one(database: Database) -> None:
    crashed = Ledger(database, instances=Instances(database, heartbeat=0.05))
    await crashed.instances.beat()
    lost, own = call(estimate=80), call(estimate=30)
    crashed.admit(lost)
    await crashed.flush()

    survivor = Ledger(database, instances=Instances(database, heartbeat=0.05))
    await survivor.start()
    survivor.admit(own)
    await survivor.flush()
    beating = asyncio.create_task(survivor.keep_alive())
    try:
        deadline = time.monotonic() + 5
        while (await row(database, lost))["state"] == "in_flight":
            assert time.monotonic() < deadline, "the crashed process's call is still in flight"
            await asyncio.sleep(0.05)
        assert (await row(database, own))["state"] == "in_flight"  # its own call is alive
    finally:
        beating.cancel()
        await survivor.close()


async def test_rows_without_a_process_are_settled_at_start(database: Database) -> None:
    """Rows an earlier version wrote carry no process id: a start settles them, as it always did."""
    earlier = Ledger(database)
    entry = call()
    earlier.admit(entry)
    await earlier.flush()
    async with database.begin() as conn:
        await conn.execute(sa.text("UPDATE usage_ledger SET instance = NULL"))

    assert await Ledger(database).recover() == 0
    assert await Ledger(database).recover(unowned=True) == 1


async def test_an_earlier_ledger_table_gains_the_process_column(database_url: str) -> None:
    database = Database(database_url)
    await database.start()
    async with database.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE usage_ledger DROP COLUMN instance"))
    await database.close()

    database = Database(database_url)
    await database.start()
    ledger = Ledger(database)
    entry = call()
    ledger.admit(entry)
    await ledger.flush()
    assert (await row(database, entry))["instance"] == ledger.instances.id
    await database.close()


async def test_month_totals_per_user_and_month(database: Database) -> None:
    ledger = Ledger(database)
    a1, a2, a3 = call("alice", 10, JANUARY), call("alice", 20, JANUARY), call("alice", 100, JANUARY)
    feb = call("alice", 1000, FEBRUARY)
    b1 = call("bob", 7, JANUARY)
    for entry in (a1, a2, a3, feb, b1):
        ledger.admit(entry)
    ledger.settle(a1, 200, Usage(10, 5, 0, 15))
    ledger.settle(a2, 200, Usage(20, 10, 3, 30))
    ledger.settle(feb, 200, Usage(1000, 1, 0, 1001))
    ledger.settle(b1, 200, Usage(7, 3, 0, 10, estimated=True))
    # a3 stays in flight, counted at its estimate; nothing flushed: totals include pending writes

    january = await ledger.month_totals("2024-01")
    assert january == [
        {
            "month": "2024-01",
            "user_id": "alice",
            "requests": 3,
            "prompt_tokens": 130,
            "completion_tokens": 15,
            "total_tokens": 145,
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
    assert all(
        type(value) is int for total in january for key, value in total.items() if key not in ("month", "user_id")
    )
    assert await ledger.month_totals("2024-01", "bob") == [january[1]]
    assert [(t["user_id"], t["total_tokens"]) for t in await ledger.month_totals("2024-02")] == [("alice", 1001)]
    assert await ledger.month_totals("2023-12") == []
    assert await ledger.month_totals("2024-01", "carol") == []


def test_the_month_is_the_utc_month() -> None:
    paris = timezone(timedelta(hours=1))
    assert [month_of(moment) for moment in (JANUARY, FEBRUARY)] == ["2024-01", "2024-02"]
    assert month_of(datetime(2024, 2, 1, 0, 30, tzinfo=paris)) == "2024-01"  # 23:30 UTC on January 31
    assert month_of(datetime(999, 12, 31, 23, 0, tzinfo=UTC)) == "0999-12"


async def test_a_call_is_charged_to_the_month_it_was_admitted_in(database: Database) -> None:
    ledger = Ledger(database)
    entry = call(admitted_at=JANUARY)
    ledger.admit(entry)
    ledger.settle(entry, 200, Usage(1, 1, 0, 2))  # finishes now, long after January
    assert [t["total_tokens"] for t in await ledger.month_totals("2024-01")] == [2]
    assert await ledger.month_totals(datetime.now(UTC).strftime("%Y-%m")) == []
