"""The in-memory event log: for tests and for a single process that may forget.

Nothing survives the instance, so each ``MemoryLog`` gets a new random epoch
when it is created: an epoch changes exactly when a stream's history is lost,
and a restarted in-memory log has lost all of it (docs/event-log.md,
"Positions and resume"). A client resuming with an
old epoch then gets ``recovered: false`` instead of positions that now mean
other events (docs/architecture.md invariant 2).

An append runs without awaiting anything, so within the event loop it is
atomic: seqs are contiguous per thread whatever the concurrency, and the
optional ``projector`` sees each batch before it becomes visible — if the
projector raises, nothing is stored (the in-memory store uses this to commit
a run's status with its terminal event, invariant 3) and the caller gets
:class:`~agentcast.errors.AppendRejected` (the exception chained), as with
the SQLite log: retrying the same events would fail the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import AppendRejected, LogUnavailable
from ..events import encode_envelope
from .base import EventDraft, EventLog, StoredEvent, StreamInfo, resolve_start
from .follower import StreamFollower
from .tail import DEFAULT_TAIL_EVENTS, DEFAULT_TAIL_THREADS, CommitListener, Tail

__all__ = ["MemoryLog", "MemoryProjector", "stored_event"]

#: Called with each batch of newly stored events, before they become visible.
MemoryProjector = Callable[[list[StoredEvent]], None]


class _Stream:
    """One thread's retained events: ``events[i].seq == first_seq + i``."""

    __slots__ = ("events", "first_seq")

    def __init__(self) -> None:
        self.first_seq = 1
        self.events: list[StoredEvent] = []

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - 1


class MemoryLog:
    """An :class:`~agentcast.log.base.EventLog` held in this process's memory.

    Args:
        projector: Optional callback run with each batch of new events
            inside the append (see the module docstring).
        tail_events_per_thread: Bound of the follow tail per thread.
        tail_threads: Bound of threads in the follow tail.
    """

    name = "memory"
    durability = "memory"

    def __init__(
        self,
        *,
        projector: MemoryProjector | None = None,
        tail_events_per_thread: int = DEFAULT_TAIL_EVENTS,
        tail_threads: int = DEFAULT_TAIL_THREADS,
    ) -> None:
        self._epoch = os.urandom(8).hex()
        self._projector = projector
        self._streams: dict[str, _Stream] = {}
        self._by_id: dict[str, StoredEvent] = {}
        self._tail = Tail(tail_events_per_thread, tail_threads)
        self._closed = False

    # Public methods

    @property
    def epoch(self) -> str:
        """The epoch of every stream of this instance."""
        return self._epoch

    async def open(self) -> None:
        """Nothing to connect; reopening after :meth:`close` keeps the data and epoch."""
        self._closed = False
        self._tail.reopen()

    async def close(self) -> None:
        """End every follower; later calls raise ``LogUnavailable`` until reopened."""
        self._closed = True
        self._tail.close()

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Store ``drafts`` atomically, in order; see ``EventLog.append``.

        Raises:
            AppendRejected: the projector raised; nothing was stored.
        """
        self._check_open()
        stored: list[StoredEvent] = []
        new: list[StoredEvent] = []
        pending: dict[str, StoredEvent] = {}
        heads: dict[str, int] = {}
        for draft in drafts:
            # Invariant 7: an event_id already stored (or earlier in this
            # batch) is returned, not stored again.
            existing = self._by_id.get(draft.event_id) or pending.get(draft.event_id)
            if existing is not None:
                stored.append(existing)
                continue
            head = heads.get(draft.thread_id)
            if head is None:
                stream = self._streams.get(draft.thread_id)
                head = 0 if stream is None else stream.last_seq
            seq = heads[draft.thread_id] = head + 1
            event = stored_event(draft, seq)
            pending[draft.event_id] = event
            stored.append(event)
            new.append(event)
        if not new:
            return stored
        if self._projector is not None:
            try:
                self._projector(new)  # raising here leaves nothing stored
            except LogUnavailable:
                raise  # transient by its own account: the caller retries
            except Exception as exc:
                # The same events would fail the same way: permanent for this call.
                raise AppendRejected(f"the append was rejected: {exc!r}") from exc
        for event in new:
            self._stream(event.thread_id).events.append(event)
            self._by_id[event.event_id] = event
        self._tail.publish(new)
        return stored

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` retained events with ``seq > after_seq``, in order."""
        self._check_open()
        stream = self._streams.get(thread_id)
        if stream is None or limit <= 0:
            return []
        start = max(after_seq - stream.first_seq + 1, 0)
        return stream.events[start : start + limit]

    async def info(self, thread_id: str) -> StreamInfo:
        """The stream's epoch and retained range (creating the stream if new)."""
        self._check_open()
        stream = self._stream(thread_id)
        return StreamInfo(self._epoch, stream.first_seq, stream.last_seq)

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> StreamFollower:
        """Start following ``thread_id`` from the position, per ``resolve_start``."""
        start = resolve_start(await self.info(thread_id), after_seq, epoch)
        return StreamFollower(
            thread_id, start, tail=self._tail, read=self.read, is_closed=self._is_closed
        )

    async def trim(self, thread_id: str, before_seq: int) -> int:
        """Delete events with ``seq < before_seq``; keep the epoch. Returns how many."""
        self._check_open()
        stream = self._streams.get(thread_id)
        if stream is None:
            return 0
        cutoff = min(before_seq, stream.last_seq + 1)
        count = cutoff - stream.first_seq
        if count <= 0:
            return 0
        for event in stream.events[:count]:
            del self._by_id[event.event_id]
        del stream.events[:count]
        stream.first_seq = cutoff
        self._tail.trim(thread_id, cutoff)
        return count

    async def settle(self) -> None:
        """Nothing to wait for: listeners run within the append (``EventLog.settle``)."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Run ``listener(events)`` after each commit, before any follower sees the events."""
        self._tail.add_commit_listener(listener)

    # Private methods

    def _stream(self, thread_id: str) -> _Stream:
        stream = self._streams.get(thread_id)
        if stream is None:
            stream = self._streams[thread_id] = _Stream()
        return stream

    def _is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LogUnavailable("log closed")


def stored_event(draft: EventDraft, seq: int) -> StoredEvent:
    """The committed form of ``draft`` (every backend uses this).

    The envelope is encoded here, once per event; every subscriber is later
    sent these same bytes (``events`` module docstring).
    """
    raw = encode_envelope(
        event_type=draft.type,
        event_id=draft.event_id,
        thread_id=draft.thread_id,
        run_id=draft.run_id,
        parent_run_id=draft.parent_run_id,
        seq=seq,
        ts=draft.ts,
        agent=draft.agent,
        data=draft.data,
    )
    return StoredEvent(
        draft.thread_id,
        seq,
        draft.event_id,
        draft.run_id,
        draft.parent_run_id,
        draft.type,
        draft.ts,
        raw,
    )


if TYPE_CHECKING:  # mypy proves the backend satisfies the protocol

    def _check(log: MemoryLog) -> EventLog:
        return log
