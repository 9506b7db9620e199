"""Which gateway processes are alive: each one says so every heartbeat in the database they share.

A call in flight belongs to the process that admitted it. A process silent for `SILENT_BEATS`
of its own heartbeats has crashed, or stalled for so long that it counts as crashed, and the
others settle its calls (stores/ledger.py) and free its Redis reservations. A live process's
calls are never touched. "Silent" compares a process's last beat with the observer's clock, so
the clocks must agree to well within a heartbeat (NTP does).

A process on the same machine (and in the same PID namespace) needs no waiting: whether it still
runs is a question the kernel answers. So a gateway restarted there after a crash settles its
predecessor's calls as it starts; one in a new container waits for the silence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_gateway.stores.database import Database, instances

SILENT_BEATS = 3


@dataclass(frozen=True)
class Dead:
    ids: list[str]  # the processes known dead: silent for long, or no longer running on this machine
    # The longest silence any process is allowed: what the observer's own beats must have gone
    # through for before silence means death (after a database outage, everyone was silent).
    longest_silence: float


class Instances:
    def __init__(self, database: Database, heartbeat: float, instance_id: str | None = None) -> None:
        self.database = database
        self.heartbeat = heartbeat
        self.id = instance_id or os.urandom(8).hex()
        insert = postgresql.insert if database.dialect == "postgresql" else sqlite.insert
        beat = insert(instances).values(
            id=self.id, seen_at=sa.bindparam("now"), heartbeat=heartbeat, process=_process()
        )
        self._beat = beat.on_conflict_do_update(
            index_elements=[instances.c.id], set_={"seen_at": beat.excluded.seen_at}
        )

    async def beat(self) -> None:
        async with self.database.begin() as conn:
            await conn.execute(self._beat, {"now": datetime.now(UTC)})

    async def dead(self, conn: Any, steady_for: float) -> Dead:
        """The processes known dead; silence counts only if this one's own beats have gone
        through for `steady_for` seconds, longer than any process may stay silent."""
        now = datetime.now(UTC)
        rows = (await conn.execute(sa.select(instances).where(instances.c.id != self.id))).all()
        longest = max([SILENT_BEATS * self.heartbeat, *(SILENT_BEATS * row.heartbeat for row in rows)])
        dead = [
            row.id
            for row in rows
            if _has_ended(row.process)
            or (steady_for >= longest and _utc(row.seen_at) + timedelta(seconds=SILENT_BEATS * row.heartbeat) < now)
        ]
        return Dead(dead, longest)

    def known(self) -> sa.Select[Any]:
        """The ids of every process that has said it lives and is not known dead."""
        return sa.select(instances.c.id)

    def forget(self, ids: list[str]) -> sa.Delete:
        return sa.delete(instances).where(instances.c.id.in_(ids))

    async def leave(self) -> None:
        """At a clean stop: this process has no calls in flight left to be settled by others."""
        async with self.database.begin() as conn:
            await conn.execute(self.forget([self.id]))


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite keeps no zone


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
