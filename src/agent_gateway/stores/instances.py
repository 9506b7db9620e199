"""Which gateway processes are alive: each one says so every heartbeat in the database they share.

A call in flight belongs to the process that admitted it. A process silent for `SILENT_BEATS`
heartbeats has crashed, or stalled for so long that it counts as crashed, and the others settle its
calls (stores/ledger.py). A live process's calls are never touched. "Silent" is measured on each
process's own clock, so the clocks must agree to well within a heartbeat (NTP does).

A process on the same machine (and in the same PID namespace) needs no waiting: whether it still
runs is a question the kernel answers. So a gateway restarted there after a crash settles its
predecessor's calls as it starts; one in a new container waits for the silence.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_gateway.stores.database import Database, instances

SILENT_BEATS = 3


class Instances:
    def __init__(self, database: Database, heartbeat: float, instance_id: str | None = None) -> None:
        self.database = database
        self.heartbeat = heartbeat
        self.id = instance_id or os.urandom(8).hex()
        self.silent_after = timedelta(seconds=heartbeat * SILENT_BEATS)
        insert = postgresql.insert if database.dialect == "postgresql" else sqlite.insert
        beat = insert(instances).values(id=self.id, seen_at=sa.bindparam("now"), process=_process())
        self._beat = beat.on_conflict_do_update(
            index_elements=[instances.c.id], set_={"seen_at": beat.excluded.seen_at}
        )

    async def beat(self) -> None:
        async with self.database.begin() as conn:
            await conn.execute(self._beat, {"now": datetime.now(UTC)})

    async def ended(self, conn: Any) -> list[str]:
        """The ids of the processes on this machine that no longer run, however recently heard from."""
        rows = await conn.execute(sa.select(instances.c.id, instances.c.process).where(instances.c.id != self.id))
        return [instance for instance, process in rows.all() if _has_ended(process)]

    def alive(self, now: datetime) -> sa.Select[Any]:
        """The ids of the processes heard from lately."""
        return sa.select(instances.c.id).where(instances.c.seen_at >= now - self.silent_after)

    def silent(self, now: datetime) -> sa.Select[Any]:
        """The ids of the processes silent for too long."""
        return sa.select(instances.c.id).where(instances.c.seen_at < now - self.silent_after)

    def forget(self, now: datetime, ended: list[str]) -> sa.Delete:
        return sa.delete(instances).where(
            sa.or_(instances.c.seen_at < now - self.silent_after, instances.c.id.in_(ended))
        )

    async def leave(self) -> None:
        """At a clean stop: this process has no calls in flight left to be settled by others."""
        async with self.database.begin() as conn:
            await conn.execute(sa.delete(instances).where(instances.c.id == self.id))


def _machine() -> str | None:
    """This boot of this machine and this PID namespace: where a pid names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # no /proc: only heartbeats tell
        return None


_MACHINE = _machine()


def _process() -> str | None:
    return f"{_MACHINE}/{os.getpid()}" if _MACHINE is not None else None


def _has_ended(process: str | None) -> bool:
    if process is None or _MACHINE is None:
        return False
    machine, _, pid = process.rpartition("/")
    if machine != _MACHINE:
        return False  # elsewhere (another machine, another container): its silence tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # runs, as another user
        return False
    return False
