"""Ledger rows the database could not take, kept on local disk until it can (nothing spent is lost).

One JSON line per row state, appended and fsync'd before the rows leave memory. Read back as
the last state of each row id: the ledger's upsert never turns a settled row back, so
replaying twice, or a row the database already has, changes nothing.

Processes may share the file. A replay first claims it: under the file's lock it is renamed to a
claim of its own (`<name>.<time>-<pid>.replay`), so rows appended from then on go to a new file
and none is removed unread; a claim is removed once its rows are in the database. A claim a
crashed process left is replayed by the next one (replaying twice changes nothing).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson


class Outbox:
    """A file of rows; with no path (a CLI reading usage), an outbox that keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        # Rows the database refused for what they hold (not replayed: an operator looks at them).
        self.refused = path.with_name(path.name + ".refused") if path is not None else None

    def spill(self, rows: list[dict[str, Any]]) -> None:
        """Append `rows` (each with an `id`) and return once they are on disk."""
        if self.path is not None:
            _append(self.path, rows)

    def set_aside(self, rows: list[dict[str, Any]]) -> None:
        if self.refused is not None:
            _append(self.refused, rows)

    def claim(self) -> list[Path]:
        """The claims to replay, oldest first: those on disk (of a replay that failed, or of a
        process that crashed), else a new one of what the file holds. One claim at a time, so
        that the tries of a long outage do not pile up claims to read again and again."""
        if self.path is None:
            return []
        if claims := self._claims():
            return claims
        try:
            descriptor = _locked(self.path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                os.rename(self.path, self.path.with_name(f"{self.path.name}.{time.time_ns()}-{os.getpid()}.replay"))
            finally:
                os.close(descriptor)
        return self._claims()

    def _claims(self) -> list[Path]:
        assert self.path is not None
        return sorted(self.path.parent.glob(f"{self.path.name}.*.replay"))

    @staticmethod
    def read(files: list[Path]) -> list[dict[str, Any]]:
        """The last state of every row in `files` (a torn line, or one that is not a row, is skipped)."""
        rows: dict[str, dict[str, Any]] = {}
        for file in files:
            try:
                data = file.read_bytes()
            except FileNotFoundError:  # replayed by another process meanwhile
                continue
            for line in data.splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("id"), str):  # anything else is not a row
                    rows[row["id"]] = row
        return list(rows.values())

    def held(self) -> int:
        """How many rows are waiting, claimed or not."""
        if self.path is None:
            return 0
        return len(self.read([*self._claims(), self.path]))

    def exists(self) -> bool:
        return self.path is not None and (self.path.exists() or bool(self._claims()))

    @staticmethod
    def done(claims: list[Path]) -> None:
        """The claims' rows are in the database."""
        for claim in claims:
            claim.unlink(missing_ok=True)


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leading newline: a line torn by a crash stays a torn line, and this row a whole one.
    lines = b"\n" + b"".join(orjson.dumps(row, default=str) + b"\n" for row in rows)
    descriptor = _locked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        view = memoryview(lines)
        while view:  # a short write (a full disk) raises rather than leave half a batch unsaid
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _locked(path: Path, flags: int) -> int:
    """A descriptor of the file at `path`, under its exclusive lock. Checked after locking: a
    descriptor opened before a replay renamed the file would write to, or claim, that claim."""
    while True:
        descriptor = os.open(path, flags, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                os.close(descriptor)
                raise
        os.close(descriptor)  # renamed meanwhile: open the file now at `path`
