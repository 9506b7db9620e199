"""Requests in flight per user (MAX_CONCURRENT_PER_USER), so one user cannot take every slot.

Counted in this process, like the process-wide cap (MAX_CONCURRENT_REQUESTS) whose slots it
shares out: a slot is this process's to give, so no Redis round trip is needed to guard it.
"""

from __future__ import annotations


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}  # only users with requests in flight: bounded by them

    def take(self, user_id: str) -> bool:
        """A slot for one more of the user's requests; False when they already hold `limit`."""
        count = self._counts.get(user_id, 0)
        if count >= self.limit:
            return False
        self._counts[user_id] = count + 1
        return True

    def give_back(self, user_id: str) -> None:
        count = self._counts.pop(user_id, 0) - 1
        if count > 0:
            self._counts[user_id] = count

    def held(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)
