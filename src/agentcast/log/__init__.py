"""The per-thread event log: one interface (:mod:`.base`), one file per backend.

``MemoryLog`` forgets on restart (a new epoch each time); ``SqliteLog`` is the
durable embedded default. Both hand out the same :class:`StreamFollower`.
"""

from __future__ import annotations

from .base import (
    EventDraft,
    EventLog,
    Follower,
    FollowStart,
    StoredEvent,
    StreamInfo,
    resolve_start,
)
from .follower import FollowerClosed, HistoryLost, StreamFollower
from .memory import MemoryLog
from .sqlite import SqliteLog

__all__ = [
    "EventDraft",
    "EventLog",
    "FollowStart",
    "Follower",
    "FollowerClosed",
    "HistoryLost",
    "MemoryLog",
    "SqliteLog",
    "StoredEvent",
    "StreamFollower",
    "StreamInfo",
    "resolve_start",
]
