"""Open connections per user: the ``max_connections_per_user`` bound.

Why a bound: every WebSocket and SSE stream holds a send queue (or a cursor)
and tasks in this process; without a cap per user one user — a script opening
tabs in a loop, a leaked token — could take the memory and file descriptors
every other user needs (docs/architecture.md invariant 6). The count is per
authenticated user id (invariant 4: nothing a client says chooses whose count
it is), per gateway (one per app, never a module global), WebSocket and SSE
together.

A connection takes a :class:`ConnectionSlot` before it starts and gives it back
when it ends, whatever way it ends: :meth:`ConnectionSlot.release` is
idempotent, so every exit path may call it.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["ConnectionSlot", "UserConnections"]


class ConnectionSlot:
    """One open connection counted against its user; :meth:`release` gives it back once."""

    def __init__(self, registry: UserConnections, user_id: str) -> None:
        self.user_id = user_id
        self._registry: UserConnections | None = registry

    def release(self) -> None:
        """Give the slot back (a second call does nothing)."""
        registry, self._registry = self._registry, None
        if registry is not None:
            registry._release(self.user_id)


class UserConnections:
    """How many connections each user has open in this gateway, and the cap.

    Args:
        limit: ``max_connections_per_user``: the most connections one user may
            hold open at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, user_id: str) -> ConnectionSlot | None:
        """A slot for one more connection of ``user_id``; ``None`` when the user is at the cap.

        Synchronous (no await between the check and the count), so concurrent
        handshakes cannot both take the last slot.
        """
        if self._open[user_id] >= self.limit:
            return None
        self._open[user_id] += 1
        return ConnectionSlot(self, user_id)

    def count(self, user_id: str) -> int:
        """How many connections ``user_id`` has open now."""
        return self._open[user_id]

    def _release(self, user_id: str) -> None:
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]
