"""The one :class:`~agentcast.log.base.Follower` implementation, shared by every backend.

docs/architecture.md invariant 2, "Catch-up → live": reading then subscribing leaves
gaps, subscribing then reading duplicates; a cursor has neither. Each
:meth:`StreamFollower.next_batch`:

1. takes the thread's waiter from the :class:`~agentcast.log.tail.Tail`
   BEFORE reading, so a commit that lands during the read still wakes it;
2. reads ``seq > cursor`` from the tail, or from the backend when the tail
   cannot answer (an old cursor, an evicted thread);
3. returns what it found and moves the cursor to its last seq, or waits on
   the waiter when there is nothing new, then starts over.

Because every read is "after the cursor", a racing commit is delivered
exactly once whichever read sees it first.

How a follower ends (a contract for the gateway):

* :meth:`StreamFollower.aclose` — ``next_batch`` (pending or later) raises
  :class:`FollowerClosed`; ``async for`` simply stops.
* the log was closed — ``next_batch`` and ``async for`` raise
  :class:`FollowerClosed`.
* events after the cursor were trimmed before this follower read them —
  :class:`HistoryLost`, never a silent gap.

A read of the backend that fails because its database is away
(:class:`~agentcast.errors.LogUnavailable`, an outage) does not end the
follower: ``next_batch`` waits and reads again, 50 ms after the first
failure and doubling up to 1 s, until the database answers — as emits wait
for it — or the follower is closed. Nothing is skipped: the read starts
after the same cursor.

Both endings are :class:`~agentcast.errors.LogUnavailable`, so a subscription has
one remedy for all: follow again from ``(epoch, cursor)``;
:func:`~agentcast.log.base.resolve_start` then says ``recovered: false``
if the history is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from ..errors import InternalError, LogUnavailable
from .base import FollowStart, StoredEvent
from .tail import Tail

__all__ = ["DEFAULT_BATCH", "FollowerClosed", "HistoryLost", "ReadFn", "StreamFollower"]

#: Events fetched per read when iterating one by one.
DEFAULT_BATCH = 256
#: While the backend's reads fail, the follower reads again this long after, doubling.
_READ_RETRY_MIN_S = 0.05
_READ_RETRY_MAX_S = 1.0

#: The backend's read: ``(thread_id, after_seq, limit) -> events``, committed data only.
ReadFn = Callable[[str, int, int], Awaitable[list[StoredEvent]]]


class FollowerClosed(LogUnavailable):
    """The follower, or the log it follows, was closed."""


class HistoryLost(LogUnavailable):
    """Events after the cursor were trimmed before this follower read them.

    Follow again from the same position: the new start will say
    ``recovered: false`` and where delivery restarts.
    """

    def __init__(self, thread_id: str, cursor: int, next_seq: int) -> None:
        super().__init__(
            f"events {cursor + 1}..{next_seq - 1} of thread {thread_id} were trimmed "
            "before this follower read them; follow again to resume"
        )
        self.thread_id = thread_id
        self.cursor = cursor
        self.next_seq = next_seq


class StreamFollower:
    """A cursor over one thread's stream: catch-up, then live, each event once.

    Args:
        thread_id: The stream followed.
        start: The resolved start (from :func:`~agentcast.log.base.resolve_start`).
        tail: The backend's tail and notification.
        read: The backend's read, used when the tail cannot answer.
        is_closed: Whether the log is closed (checked at every wake-up).
    """

    def __init__(
        self,
        thread_id: str,
        start: FollowStart,
        *,
        tail: Tail,
        read: ReadFn,
        is_closed: Callable[[], bool],
    ) -> None:
        self._thread_id = thread_id
        self._start = start
        self._tail = tail
        self._read = read
        self._is_closed = is_closed
        self._cursor = start.after_seq  # last seq handed out
        self._fetched = start.after_seq  # last seq read (>= cursor while buffered)
        self._buffer: deque[StoredEvent] = deque()  # read, not yet handed out (iteration)
        self._waiter: asyncio.Future[None] | None = None
        self._pushing: asyncio.Future[None] | None = None  # set while push() runs
        self._busy = False
        #: Backend reads failed in a row (an outage): sets the wait before the next.
        self._read_failures = 0
        self._closed = False

    # Public methods

    @property
    def thread_id(self) -> str:
        """The stream followed."""
        return self._thread_id

    @property
    def start(self) -> FollowStart:
        """The resolved starting position."""
        return self._start

    @property
    def cursor(self) -> int:
        """The seq of the last event handed out (``start.after_seq`` at first)."""
        return self._cursor

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def next_batch(self, max_events: int = DEFAULT_BATCH) -> list[StoredEvent]:
        """Wait until at least one event follows the cursor; return up to ``max_events``.

        Raises:
            FollowerClosed: this follower or its log was closed.
            HistoryLost: events after the cursor were trimmed unread.
        """
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        if self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(max_events, len(self._buffer)))]
        else:
            batch = await self._fetch(max_events)
        self._cursor = batch[-1].seq
        return batch

    async def push(self, sink: Callable[[list[StoredEvent]], bool], max_events: int) -> None:
        """Hand committed events to ``sink`` synchronously, from the commit notification.

        The live fast path: instead of one task wake-up per commit, ``sink``
        is called inside the tail's notification (after the commit, like a
        woken ``next_batch``) with each batch after the cursor, and the cursor
        moves past it. Returns — leaving the rest to :meth:`next_batch` —
        when the tail cannot answer (old cursor, evicted thread, a gap), when
        this follower or its log closes, or when ``sink`` returns ``False``
        (it keeps that batch either way). Cancelling it is safe.

        Raises:
            Exception: whatever ``sink`` raised (the batch counts as handed out).
        """
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        if self._busy:
            raise InternalError("next_batch is already running on this follower")
        if self._buffer:
            return  # buffered events go out through next_batch, in order
        self._busy = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tail, thread_id = self._tail, self._thread_id

        def on_notify() -> None:
            if done.done():
                return
            if self._closed or self._is_closed() or tail.closed:
                done.set_result(None)
                return
            while True:
                batch = tail.read(thread_id, self._fetched, max_events)
                if batch is None or (batch and batch[0].seq != self._fetched + 1):
                    done.set_result(None)  # next_batch reads the backend or reports the loss
                    return
                if not batch:
                    return
                self._fetched = self._cursor = batch[-1].seq
                try:
                    more = sink(batch)
                except Exception as exc:
                    done.set_exception(exc)
                    return
                if not more:
                    done.set_result(None)
                    return

        self._pushing = done
        tail.add_listener(thread_id, on_notify)
        try:
            on_notify()  # what was committed before we listened
            await done
        finally:
            tail.remove_listener(thread_id, on_notify)
            self._pushing = None
            self._busy = False

    def __aiter__(self) -> StreamFollower:
        """Iterate events one by one until :meth:`aclose` (see the module docstring)."""
        return self

    async def __anext__(self) -> StoredEvent:
        if not self._buffer:
            try:
                self._buffer.extend(await self._fetch(DEFAULT_BATCH))
            except FollowerClosed:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
        event = self._buffer.popleft()
        self._cursor = event.seq
        return event

    async def aclose(self) -> None:
        """Stop following; a pending ``next_batch`` raises :class:`FollowerClosed`."""
        self._closed = True
        self._buffer.clear()
        self._wake()

    # Private methods

    async def _fetch(self, limit: int) -> list[StoredEvent]:
        """Read up to ``limit`` events after ``_fetched``, waiting for one if needed."""
        if self._busy:
            raise InternalError("next_batch is already running on this follower")
        self._busy = True
        try:
            while True:
                self._check_open()
                # Invariant 2: the waiter is taken BEFORE the read, so a commit
                # published while we read still wakes us (no lost wake-up).
                waiter = self._tail.waiter(self._thread_id)
                self._waiter = waiter
                try:
                    batch = self._tail.read(self._thread_id, self._fetched, limit)
                    if batch is None:
                        try:
                            batch = await self._read(self._thread_id, self._fetched, limit)
                        except (FollowerClosed, HistoryLost):
                            raise
                        except LogUnavailable:
                            # The database is away (an outage): wait for it as emits
                            # do, reading again with backoff; a commit or aclose()
                            # ends the wait at once.
                            self._read_failures += 1
                            await asyncio.wait({waiter}, timeout=self._retry_delay())
                            continue
                        self._read_failures = 0
                        self._check_open()
                    if batch:
                        first = batch[0].seq
                        if first != self._fetched + 1:
                            raise HistoryLost(self._thread_id, self._fetched, first)
                        self._fetched = batch[-1].seq
                        return batch
                    await waiter
                finally:
                    self._waiter = None
                    self._tail.discard(self._thread_id, waiter)
        finally:
            self._busy = False

    def _retry_delay(self) -> float:
        exponent = min(self._read_failures - 1, 16)
        return float(min(_READ_RETRY_MAX_S, _READ_RETRY_MIN_S * 2**exponent))

    def _check_open(self) -> None:
        if self._closed:
            raise FollowerClosed("follower closed")
        if self._is_closed():
            raise FollowerClosed("log closed")

    def _wake(self) -> None:
        for waiter in (self._waiter, self._pushing):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
