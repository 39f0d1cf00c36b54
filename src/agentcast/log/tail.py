"""The in-memory tail of recent events and the per-thread "committed" notification.

docs/architecture.md invariant 2, "Catch-up → live": a follower keeps a cursor, waits on
a per-thread notification fired after commit, and reads ``seq > cursor`` from
an in-memory tail of recent events, falling back to the backend for older
positions. This module is that tail and that notification; the follower that
uses them is :mod:`agentcast.log.follower`.

The tail is bounded (invariant 6): at most ``max_events`` per thread and
``max_threads`` threads, least recently used evicted first. Per thread it
knows the range it holds *contiguously*: every event with
``floor < seq <= head``. A read after a cursor below ``floor`` (or of a
thread it does not track) answers ``None`` — "ask the backend" — never a
partial answer that would be a gap.

Waiters are kept apart from the LRU: evicting a thread's events must never
drop a follower's wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from .base import StoredEvent

__all__ = [
    "DEFAULT_TAIL_BYTES",
    "DEFAULT_TAIL_EVENTS",
    "DEFAULT_TAIL_THREADS",
    "CommitListener",
    "Tail",
]

logger = logging.getLogger(__name__)

#: Called with each committed batch, on the event loop, before any follower sees it.
CommitListener = Callable[[Sequence[StoredEvent]], None]

DEFAULT_TAIL_EVENTS = 1024
DEFAULT_TAIL_THREADS = 10_000
#: The whole tail's budget of envelope bytes; beyond it whole threads are
#: evicted, least recently used first (their followers fall back to the backend).
DEFAULT_TAIL_BYTES = 64 * 1024 * 1024


class _ThreadTail:
    """One thread's recent events: ``events[i].seq == floor + 1 + i``."""

    __slots__ = ("events", "floor", "nbytes")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.events: list[StoredEvent] = []
        self.nbytes = 0

    @property
    def head(self) -> int:
        return self.floor + len(self.events)


class Tail:
    """Recent committed events per thread, plus the per-thread wake-up.

    Only the event loop thread touches it; a backend calls :meth:`publish`
    after its commit returned, in commit order.

    Args:
        max_events: Events kept per thread (the oldest are dropped first, an eighth
            of ``max_events`` at a time, so a thread may briefly hold up to 9/8 of it).
        max_threads: Threads tracked (least recently used evicted first).
        max_bytes: Envelope bytes held in all (least recently used threads evicted first).
    """

    def __init__(
        self,
        max_events: int = DEFAULT_TAIL_EVENTS,
        max_threads: int = DEFAULT_TAIL_THREADS,
        max_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        if max_events < 1 or max_threads < 1 or max_bytes < 1:
            raise ValueError("tail bounds must be >= 1")
        self._max_events = max_events
        #: Events a thread may hold beyond ``max_events`` before its oldest
        #: are dropped, all at once (an eighth: 128 of the default 1,024).
        self._slack = max_events // 8
        self._max_threads = max_threads
        self._max_bytes = max_bytes
        self._nbytes = 0
        self._threads: OrderedDict[str, _ThreadTail] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        #: Persistent per-thread callbacks run at every notify (live followers
        #: that take committed events synchronously, without a task wake-up).
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._commit_listeners: list[CommitListener] = []
        self._closed = False

    # Public methods: events

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Add committed events (seq order per thread) and wake their threads' followers.

        Commit listeners run first, so that what they record (a run's slot
        freed by its terminal event) holds before anyone can see the events.
        """
        for listener in self._commit_listeners:
            try:
                listener(events)
            except Exception:
                logger.exception("a commit listener failed; delivery goes on")
        touched: dict[str, None] = {}
        for event in events:
            self._push(event)
            touched[event.thread_id] = None
        for thread_id in touched:
            self.notify(thread_id)

    def read(self, thread_id: str, after_seq: int, limit: int) -> list[StoredEvent] | None:
        """Events with ``seq > after_seq`` (at most ``limit``), or ``None`` if unknown here.

        ``None`` means the tail cannot answer without risking a gap (thread
        not tracked, or ``after_seq`` below the floor): read the backend.
        """
        entry = self._threads.get(thread_id)
        if entry is None or after_seq < entry.floor:
            return None
        self._threads.move_to_end(thread_id)
        start = after_seq - entry.floor
        return entry.events[start : start + limit]

    def head(self, thread_id: str) -> int | None:
        """The last seq published for ``thread_id``, if it is tracked."""
        entry = self._threads.get(thread_id)
        return None if entry is None else entry.head

    def floor(self, thread_id: str) -> int | None:
        """The tail holds every event after this seq up to the head (if tracked)."""
        entry = self._threads.get(thread_id)
        return None if entry is None else entry.floor

    def trim(self, thread_id: str, before_seq: int) -> None:
        """Forget events with ``seq < before_seq``, as the backend just did.

        Raising the floor sends followers behind it to the backend, which
        then reports the loss instead of the tail silently covering it.
        """
        entry = self._threads.get(thread_id)
        if entry is None or before_seq - 1 <= entry.floor:
            return
        drop = min(before_seq - 1 - entry.floor, len(entry.events))
        self._drop_oldest(entry, drop)
        if entry.floor < before_seq - 1:  # trimmed beyond what we held: nothing left
            entry.floor = before_seq - 1

    def forget(self, thread_id: str) -> None:
        """Drop a thread's events (its waiters stay)."""
        entry = self._threads.pop(thread_id, None)
        if entry is not None:
            self._nbytes -= entry.nbytes

    def clear(self) -> None:
        """Drop every thread's events (e.g. after the backend was reopened)."""
        self._threads.clear()
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Envelope bytes held now."""
        return self._nbytes

    # Public methods: notification

    def waiter(self, thread_id: str) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`notify` of ``thread_id`` (or close).

        Take it BEFORE reading, so that a commit landing during the read
        still wakes the caller (no lost wake-up). Release it with
        :meth:`discard` when done.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_result(None)
            return future
        self._waiters.setdefault(thread_id, set()).add(future)
        return future

    def discard(self, thread_id: str, future: asyncio.Future[None]) -> None:
        """Release a waiter from :meth:`waiter` (no-op if already woken)."""
        waiters = self._waiters.get(thread_id)
        if waiters is None:
            return
        waiters.discard(future)
        if not waiters:
            del self._waiters[thread_id]

    def notify(self, thread_id: str) -> None:
        """Wake every waiter of ``thread_id`` and run its listeners.

        A listener that raises is logged and skipped: the others, and the
        threads notified after this one in the same batch, still get the
        events (one broken connection must not stall everyone else).
        """
        waiters = self._waiters.pop(thread_id, None)
        if waiters:
            _wake(waiters)
        listeners = self._listeners.get(thread_id)
        if listeners:
            _run_listeners(thread_id, tuple(listeners))

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Run ``listener(events)`` with every published batch, before followers see it.

        It runs synchronously on the event loop right after the commit: it
        must not block. An exception is logged and does not stop delivery.
        """
        self._commit_listeners.append(listener)

    def add_listener(self, thread_id: str, listener: Callable[[], None]) -> None:
        """Run ``listener()`` at every :meth:`notify` of ``thread_id`` (and at close).

        A listener runs synchronously inside :meth:`publish` (after the
        commit): it must not block, and should not raise (an exception is
        logged and the other listeners still run). Remove it with
        :meth:`remove_listener`.
        """
        self._listeners.setdefault(thread_id, []).append(listener)

    def remove_listener(self, thread_id: str, listener: Callable[[], None]) -> None:
        """Undo :meth:`add_listener` (no-op if not registered)."""
        listeners = self._listeners.get(thread_id)
        if listeners is None:
            return
        with contextlib.suppress(ValueError):
            listeners.remove(listener)
        if not listeners:
            del self._listeners[thread_id]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (and not undone by :meth:`reopen`)."""
        return self._closed

    def close(self) -> None:
        """Wake every waiter and listener of every thread; later waiters resolve at once.

        As in :meth:`notify`, a listener that raises is logged and skipped.
        """
        self._closed = True
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            _wake(group)
        for thread_id, listeners in list(self._listeners.items()):
            _run_listeners(thread_id, tuple(listeners))

    def reopen(self) -> None:
        """Undo :meth:`close` (the backend is open again)."""
        self._closed = False

    @property
    def waiting_threads(self) -> int:
        """Threads with at least one waiter (for tests and metrics)."""
        return len(self._waiters)

    # Private methods

    def _push(self, event: StoredEvent) -> None:
        entry = self._threads.get(event.thread_id)
        if entry is None:
            entry = self._track(event.thread_id, event.seq - 1)
        elif event.seq <= entry.head:
            return  # already held (a retried publish); never hand it out twice
        elif event.seq != entry.head + 1:
            # A gap (e.g. we were not told about some commit): restart the
            # contiguous range here; older cursors go to the backend.
            self._drop_oldest(entry, len(entry.events))
            entry.floor = event.seq - 1
        self._threads.move_to_end(event.thread_id)
        entry.events.append(event)
        entry.nbytes += len(event.raw)
        self._nbytes += len(event.raw)
        if len(entry.events) > self._max_events + self._slack:
            # In steps of ``_slack`` events: dropping one at a time shifted the
            # whole list on every publish once a busy thread was full.
            self._drop_oldest(entry, len(entry.events) - self._max_events)
        while self._nbytes > self._max_bytes and len(self._threads) > 1:
            _, evicted = self._threads.popitem(last=False)
            self._nbytes -= evicted.nbytes
        if self._nbytes > self._max_bytes:  # one thread alone over budget: keep its newest
            while len(entry.events) > 1 and self._nbytes > self._max_bytes:
                self._drop_oldest(entry, 1)

    def _drop_oldest(self, entry: _ThreadTail, count: int) -> None:
        """Drop ``count`` oldest events of ``entry``, raising its floor."""
        dropped = entry.events[:count]
        del entry.events[:count]
        entry.floor += len(dropped)
        freed = sum(len(e.raw) for e in dropped)
        entry.nbytes -= freed
        self._nbytes -= freed

    def _track(self, thread_id: str, floor: int) -> _ThreadTail:
        entry = _ThreadTail(floor)
        self._threads[thread_id] = entry
        while len(self._threads) > self._max_threads:
            _, evicted = self._threads.popitem(last=False)
            self._nbytes -= evicted.nbytes
        return entry


def _run_listeners(thread_id: str, listeners: Iterable[Callable[[], None]]) -> None:
    for listener in listeners:
        try:
            listener()
        except Exception:
            logger.exception("a listener of thread %s failed; the others still run", thread_id)


def _wake(waiters: Iterable[asyncio.Future[None]]) -> None:
    for future in waiters:
        if not future.done():
            future.set_result(None)
