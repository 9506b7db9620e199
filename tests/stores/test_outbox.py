"""The outbox file as a crash, a careless hand or another process leaves it: only whole rows are
read back, and none is lost to a replay running beside an append."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_gateway.stores.outbox import Outbox


def test_torn_lines_and_lines_that_are_not_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path)
    outbox.spill([{"id": "a", "total_tokens": 1}])
    with path.open("ab") as damaged:
        damaged.write(b'{}\n0\n"x"\n{"id": 5}\n{"id": "b", "tot')  # not rows, and a crash mid-line
    outbox.spill([{"id": "c", "total_tokens": 3}, {"id": "a", "total_tokens": 2}])
    assert outbox.read(outbox.claim()) == [{"id": "a", "total_tokens": 2}, {"id": "c", "total_tokens": 3}]


def test_rows_appended_while_a_replay_runs_wait_for_the_next(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.jsonl")
    outbox.spill([{"id": "a"}])
    claims = outbox.claim()
    outbox.spill([{"id": "b"}])  # another process, while the replay writes `a` to the database
    assert outbox.read(claims) == [{"id": "a"}]
    outbox.done(claims)
    assert outbox.exists() and outbox.held() == 1
    assert outbox.read(outbox.claim()) == [{"id": "b"}]


def test_a_claim_a_crashed_replay_left_is_replayed_by_the_next(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.jsonl")
    outbox.spill([{"id": "a", "state": "in_flight"}])
    outbox.claim()  # ... and the process dies before writing the rows
    outbox.spill([{"id": "a", "state": "settled"}])
    restarted = Outbox(tmp_path / "outbox.jsonl")
    claims = restarted.claim()  # the claim left behind first: its states are the older ones
    assert restarted.read(claims) == [{"id": "a", "state": "in_flight"}]
    restarted.done(claims)
    assert restarted.read(restarted.claim()) == [{"id": "a", "state": "settled"}]


def test_the_tries_of_a_long_outage_make_one_claim(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.jsonl")
    for attempt in range(5):  # each flush of an outage: spill, then a replay that fails
        outbox.spill([{"id": f"r{attempt}"}])
        claims = outbox.claim()
    assert len(claims) == 1 and outbox.held() == 5


def test_processes_appending_while_another_replays_lose_no_row(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    append = (
        "import sys; from pathlib import Path; from agent_gateway.stores.outbox import Outbox\n"
        "outbox = Outbox(Path(sys.argv[1]))\n"
        "for i in range(300): outbox.spill([{'id': f'{sys.argv[2]}-{i}'}])\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", append, str(path), name]) for name in ("p", "q")]
    outbox, replayed = Outbox(path), set()
    while any(writer.poll() is None for writer in writers):
        claims = outbox.claim()
        replayed |= {row["id"] for row in outbox.read(claims)}
        outbox.done(claims)
    claims = outbox.claim()
    replayed |= {row["id"] for row in outbox.read(claims)}
    assert [writer.returncode for writer in writers] == [0, 0]
    assert replayed == {f"{name}-{i}" for name in ("p", "q") for i in range(300)}
