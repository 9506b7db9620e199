"""Ledger rows the database could not take, kept on local disk until it can (nothing spent is lost).

One JSON line per row state, appended and fsync'd before the rows leave memory. Read back as
the last state of each row id: the ledger's upsert never turns a settled row back, so
replaying twice, or a row the database already has, changes nothing.
"""

from __future__ import annotations

import fcntl
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
        # A leading newline: a line torn by a crash stays a torn line, and this row a whole one.
        lines = b"\n" + b"".join(orjson.dumps(row) + b"\n" for row in rows)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # instances sharing the file append one at a time
            view = memoryview(lines)
            while view:  # a short write (a full disk) raises rather than leave half a batch unsaid
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read(self) -> list[dict[str, Any]]:
        """The last state of every row kept (a torn line, or one that is not a row, is skipped)."""
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
            if isinstance(row, dict) and isinstance(row.get("id"), str):  # anything else is not a row
                rows[row["id"]] = row
        return list(rows.values())

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
