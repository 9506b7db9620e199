"""The outbox file as a crash or a careless hand leaves it: only whole rows are read back."""

from __future__ import annotations

from pathlib import Path

from agent_gateway.stores.outbox import Outbox


def test_torn_lines_and_lines_that_are_not_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path)
    outbox.spill([{"id": "a", "total_tokens": 1}])
    with path.open("ab") as damaged:
        damaged.write(b'{}\n0\n"x"\n{"id": 5}\n{"id": "b", "tot')  # not rows, and a crash mid-line
    outbox.spill([{"id": "c", "total_tokens": 3}, {"id": "a", "total_tokens": 2}])
    assert outbox.read() == [{"id": "a", "total_tokens": 2}, {"id": "c", "total_tokens": 3}]
