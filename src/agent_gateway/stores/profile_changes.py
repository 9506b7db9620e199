"""How a change to a user reaches every running instance's caches (SPEC §5 step 3).

Two ways, and the first always works:
- the change log: every profile write and token revocation adds the user's id to the
  `profile_changes` table in the write's own transaction, so no instance can see the change
  before the row it announces. Each instance polls the log every `PROFILE_POLL_SECONDS`
  (0.5 s) and forgets what it cached of those users: a change applies within 1 s, Redis or not.
- with Redis, the writer also publishes the id on one channel every instance listens to, so
  the change applies at once; the log is then the safety net for a lost message.

Only user ids travel; keys stay in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis

from agent_gateway.stores.database import Database, profile_changes

INVALIDATION_CHANNEL = "agent-gateway:profile-changed"
KEEP = timedelta(hours=1)  # older rows are pruned; an instance that could not poll for longer forgets everything
log = logging.getLogger("agent_gateway.profiles")
Forget = Callable[[str], None]


class Forgetting:
    """What an instance forgets of a user that changed (`each`), or of every user (`everything`)."""

    def __init__(self, each: Sequence[Forget], everything: Callable[[], None]) -> None:
        self.each = each
        self.everything = everything

    def user(self, user_id: str) -> None:
        for forget in self.each:
            forget(user_id)


async def record_change(conn: Any, user_id: str) -> None:
    """Log a change to `user_id` inside the caller's transaction (`conn`), and prune old rows."""
    if conn.dialect.name == "postgresql":
        # Writers one after another: sequence numbers then commit in order, and a poller that has read
        # up to N never misses an N-1 committed later. Readers are not blocked (EXCLUSIVE allows SELECT).
        await conn.execute(sa.text("LOCK TABLE profile_changes IN EXCLUSIVE MODE"))
    now = datetime.now(UTC)
    await conn.execute(sa.insert(profile_changes).values(user_id=user_id, changed_at=now))
    await conn.execute(sa.delete(profile_changes).where(profile_changes.c.changed_at < now - KEEP))


class ChangeLog:
    """Reads the log: the newest sequence number, and the changes after one."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def latest(self) -> int:
        async with self.database.connect() as conn:
            found = (await conn.execute(sa.select(sa.func.max(profile_changes.c.seq)))).scalar_one_or_none()
        return int(found or 0)

    async def since(self, seq: int) -> list[tuple[int, str]]:
        query = (
            sa.select(profile_changes.c.seq, profile_changes.c.user_id)
            .where(profile_changes.c.seq > seq)
            .order_by(profile_changes.c.seq)
        )
        async with self.database.connect() as conn:
            return [(int(row[0]), str(row[1])) for row in (await conn.execute(query)).all()]


async def follow_changes(changes: ChangeLog, forgetting: Forgetting, interval: float, last: int | None = None) -> None:
    """Poll the change log every `interval` seconds until cancelled, forgetting each changed user.
    `last`: where the log stood before anything was cached (read at start, before serving: a first
    read after requests began would forget what they cached, in an outage with nothing to reload it)."""
    failing = False
    while True:
        try:
            if last is None:
                last = await changes.latest()
                forgetting.everything()  # what changed before (or while the log could not be read) is unknown
            else:
                for seq, user_id in await changes.since(last):
                    forgetting.user(user_id)
                    last = seq
            if failing:
                log.warning("profile change log readable again")
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("profile change log unreadable; retrying", extra={"reason": type(exc).__name__})
            failing, last = True, None
        await asyncio.sleep(interval)


async def publish_change(redis: Redis, user_id: str) -> None:
    await redis.publish(INVALIDATION_CHANNEL, user_id)


async def listen_for_changes(redis: Redis, forgetting: Forgetting) -> None:
    """Forget each user published on the channel; reconnects until cancelled."""
    task = asyncio.current_task()
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if task is not None and task.cancelling():
                        # redis-py can swallow a cancellation that lands while it reconnects; honour it here
                        raise asyncio.CancelledError
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        # (Re)subscribed, also after redis-py reconnected on its own: changes made while we
                        # were not listening are unknown.
                        forgetting.everything()
                    elif message.get("type") == "message":
                        data = message["data"]
                        forgetting.user(data.decode() if isinstance(data, bytes) else str(data))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("profile invalidation channel lost; retrying", extra={"reason": type(exc).__name__})
            await asyncio.sleep(1.0)


class ChangeNotices:
    """Tells running instances that a user changed, after the change is committed: at once through
    Redis when there is one (and this instance's own caches, `local`, directly)."""

    def __init__(self, redis: Redis | None, local: Sequence[Forget] = ()) -> None:
        self.redis = redis
        self.local = local

    async def send(self, user_id: str) -> bool:
        """True when every instance was told now; False: they learn it from the change log."""
        for forget in self.local:
            forget(user_id)
        if self.redis is None:
            return False
        try:
            await publish_change(self.redis, user_id)
        except Exception as exc:
            log.warning("could not publish a profile change on Redis", extra={"reason": type(exc).__name__})
            return False
        return True


def reach(told_now: bool, poll_seconds: float) -> str:
    """How soon a change applies everywhere, as the CLI says it."""
    if told_now:
        return "takes effect now on every instance (Redis)"
    return f"takes effect within {2 * poll_seconds:g} s on every instance"
