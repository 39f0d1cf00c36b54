"""The event log interface: one ``Protocol``, one file per backend.

A thread's stream is an append-only sequence of encoded envelopes with a
contiguous ``seq`` from 1 and an ``epoch`` token (docs/event-log.md, "Positions
and resume"). Only the bridge appends (docs/architecture.md: "Nothing appends to the log
except the bridge"); everyone else reads or follows.

Backends: :mod:`agentcast.log.memory` (tests; a new epoch every time it is
created) and :mod:`agentcast.log.sqlite` (the embedded default). A Redis
Streams backend fits the same interface: ``follow`` only needs a per-thread
notification after commit, which Redis pub/sub can deliver to other processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

__all__ = [
    "EventDraft",
    "EventLog",
    "FollowStart",
    "Follower",
    "StoredEvent",
    "StreamInfo",
    "resolve_start",
]


class EventDraft(msgspec.Struct, frozen=True):
    """An event the bridge has validated and stamped, waiting for its ``seq``.

    ``data`` is the payload, already encoded once (``events.encode_payload``).
    """

    event_id: str
    thread_id: str
    run_id: str
    parent_run_id: str | None
    type: str
    ts: float
    agent: str | None
    data: bytes
    #: ``event_id`` was made for this draft and it was never submitted before,
    #: so no stored event can carry it: a backend may skip its look-up of
    #: already stored ids (invariant 7 still holds: a retry clears the flag).
    fresh: bool = False


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as committed: its position and the envelope bytes sent to clients."""

    thread_id: str
    seq: int
    event_id: str
    run_id: str
    parent_run_id: str | None
    type: str
    ts: float
    raw: bytes


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a stream holds: its epoch and the retained seq range.

    ``first_seq`` is the first retained seq (``last_seq + 1`` when nothing is
    retained); ``last_seq`` is the head (0 for a stream with no events).
    """

    epoch: str
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class FollowStart:
    """Where a follow really starts, and whether the requested position held.

    ``after_seq`` is the position delivery starts after; when ``recovered`` is
    false it is ``first_seq - 1`` of the retained history, never a silent gap.
    """

    epoch: str
    after_seq: int
    recovered: bool


def resolve_start(info: StreamInfo, after_seq: int, epoch: str | None) -> FollowStart:
    """Apply docs/protocol.md's recovery rules to a requested position.

    ``recovered`` is false when the epoch differs, the position was trimmed
    away, or ``after_seq`` lies beyond the head; then delivery restarts from
    the first retained event. ``epoch=None`` means "whatever the stream has"
    (a first subscribe).
    """
    restart = FollowStart(info.epoch, info.first_seq - 1, False)
    if epoch is not None and epoch != info.epoch:
        return restart
    if after_seq > info.last_seq or after_seq < info.first_seq - 1:
        return restart
    return FollowStart(info.epoch, after_seq, True)


@runtime_checkable
class Follower(Protocol):
    """A cursor over one stream: catch-up, then live, each event exactly once."""

    @property
    def start(self) -> FollowStart:
        """The resolved starting position."""
        ...

    @property
    def cursor(self) -> int:
        """The seq of the last event handed out (``start.after_seq`` at first)."""
        ...

    async def next_batch(self, max_events: int = 256) -> list[StoredEvent]:
        """Wait until at least one event follows the cursor; return up to ``max_events``.

        Events come in seq order with no gap and no duplicate, whatever the
        interleaving of appends and reads.
        """
        ...

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        """Iterate events one by one, forever (until cancelled or closed)."""
        ...

    async def aclose(self) -> None:
        """Stop following; pending ``next_batch`` calls are cancelled."""
        ...


@runtime_checkable
class EventLog(Protocol):
    """A durable, per-thread, append-only event log."""

    #: Backend name for metrics and benchmark labels ("memory", "sqlite").
    name: str
    #: Durability mode for figures ("memory", "FULL", "NORMAL").
    durability: str

    async def open(self) -> None:
        """Connect / create storage. Safe to call once; ``close`` undoes it."""
        ...

    async def close(self) -> None:
        """Flush and release everything. Followers end."""
        ...

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Durably append ``drafts`` atomically, in order, and return them stored.

        Each draft gets the next contiguous ``seq`` of its thread. A draft whose
        ``event_id`` is already stored is not stored again: the stored event is
        returned in its place (idempotence, docs/architecture.md invariant 7). Followers
        are notified only after the commit.

        Raises:
            LogUnavailable: nothing was committed (the caller may retry the same
                drafts; idempotence makes that safe).
            AppendRejected: nothing was committed and retrying the same drafts
                would fail the same way (a constraint, a bad value, a
                projector that raised): fail this call only.
        """
        ...

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` retained events with ``seq > after_seq``, in order."""
        ...

    async def info(self, thread_id: str) -> StreamInfo:
        """The stream's epoch and retained range (creating the stream if new)."""
        ...

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> Follower:
        """Start following ``thread_id`` from the position, per :func:`resolve_start`."""
        ...

    async def trim(self, thread_id: str, before_seq: int) -> int:
        """Delete events with ``seq < before_seq``; keep the epoch. Returns how many."""
        ...

    def add_commit_listener(self, listener: Callable[[Sequence[StoredEvent]], None]) -> None:
        """Run ``listener(events)`` on the event loop after each commit of new events.

        It runs before any follower can see the events: state it records
        (the runner frees a thread's slot at its run's terminal event) holds
        for anyone who reacts to them. It must not block; an exception is
        logged and does not stop delivery.
        """
        ...

    async def settle(self) -> None:
        """Wait until the commit listeners of every commit already visible have run.

        A database reader (the store) can see a commit a moment before its
        listeners run on the loop. Who learns of a commit that way and then
        reads state the listeners maintain awaits this first. A log whose
        listeners run within the commit returns at once.
        """
        ...
