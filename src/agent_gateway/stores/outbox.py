"""Ledger rows the database could not take, kept on local disk until it can (nothing spent is lost).

One JSON line per row state, appended and fsync'd before the rows leave memory. Read back as
the last state of each row id: the ledger's upsert never turns a settled row back, so
replaying twice, or a row the database already has, changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


class Outbox:
    """A file of rows; with no path (a CLI reading usage), an outbox that keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def spill(self, rows: list[dict[str, Any]]) -> None:
        """Append `rows` (each with an `id`) and return once they are on disk."""
        if not rows or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, lines)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read(self) -> list[dict[str, Any]]:
        """The last state of every row kept (a line torn by a crash mid-write is skipped)."""
        if self.path is None:
            return []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        rows: dict[str, dict[str, Any]] = {}
        for line in data.splitlines():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            rows[row["id"]] = row
        return list(rows.values())

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
