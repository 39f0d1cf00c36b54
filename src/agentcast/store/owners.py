"""Thread owners in memory: the authorisation of every subscribe and run start.

A thread's owner never changes and a thread id is never reused, so a cached
answer cannot go stale; the database stores (SQLite, PostgreSQL) keep the
most recently used owners here and ask the database only for the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

from ..errors import NotFound

__all__ = ["OWNER_CACHE_THREADS", "ThreadOwners"]

#: Thread owners kept in memory (least recently used dropped first).
OWNER_CACHE_THREADS: Final = 100_000


class ThreadOwners:
    """``thread_id → user_id`` for the most recently used threads.

    Args:
        size: Threads kept at most.
    """

    def __init__(self, size: int = OWNER_CACHE_THREADS) -> None:
        self._size = size
        self._owners: OrderedDict[str, str] = OrderedDict()

    def remember(self, thread_id: str, user_id: str) -> None:
        """Record what the database said (or what was just created)."""
        self._owners[thread_id] = user_id
        self._owners.move_to_end(thread_id)
        if len(self._owners) > self._size:
            self._owners.popitem(last=False)

    async def check(
        self, user_id: str, thread_id: str, look_up: Callable[[], Awaitable[object]]
    ) -> None:
        """Raise ``NotFound`` unless ``user_id`` owns the thread.

        Args:
            look_up: Asks the database when the owner is not cached; it raises
                ``NotFound`` for another user's thread, else remembers the owner.
        """
        owner = self._owners.get(thread_id)
        if owner is None:
            await look_up()
        elif owner != user_id:
            raise NotFound("thread not found")  # the same answer as a made-up id
        else:
            self._owners.move_to_end(thread_id)
