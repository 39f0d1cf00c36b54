"""A connection's send queue and its per-thread subscriptions.

docs/architecture.md, "One direction of flow": nothing writes to a socket except a
subscription reading the log. Each :class:`Subscription` follows one thread
with a :class:`~agentcast.log.base.Follower` and puts what it reads into the
connection's :class:`Outbox`; one writer task per connection drains the outbox
onto the socket.

Backpressure (invariant 6, "bounded everything"):

* The outbox is bounded in **bytes** (``ws_send_queue_bytes``), counting a
  frame until the socket accepted it.
* **Catch-up is paced from the log**: while a subscription is reading history
  (its cursor is below the head that existed when it started) it reads the next
  batch only when the outbox is below the bound. History stays in the log, not
  in memory, and catch-up never counts as lag.
* **Live lag is not tolerated**: live events (and control frames) that push the
  live bytes of the outbox over the bound make the connection a slow consumer,
  closed with 4008. The client resumes from the log; the agents and every other
  connection never wait for it.

A :class:`TerminalForward` is the one exception to "a subscription per
followed thread": it brings a connection that cancelled a run in a thread it
does not follow that run's terminal event, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ..bridge import Bridge
from ..errors import CloseCode
from ..events import TERMINAL_TYPES
from ..log.base import Follower, StoredEvent
from ..log.follower import StreamFollower
from ..protocol import Subscribed, encode_frame, pack_events
from .refollow import FOLLOWER_ENDINGS, follows_again, replace_follower

__all__ = ["MAX_BATCH_FRAME_BYTES", "OutFrame", "Outbox", "Subscription", "TerminalForward"]

logger = logging.getLogger(__name__)

#: A ``?batch=1`` array frame holds events up to about this many bytes (a
#: single larger event still goes alone), so a frame stays well under the
#: default message size limits of client libraries (1 MiB for websockets).
MAX_BATCH_FRAME_BYTES: Final = 256 * 1024


@dataclass(slots=True, eq=False)
class _Entry:
    """One queued frame payload: a control frame or one stored event."""

    data: bytes
    live: bool
    owner: Subscription | None = None
    event: StoredEvent | None = None


@dataclass(slots=True, eq=False)
class OutFrame:
    """A frame ready to send, and what it accounts for until :meth:`Outbox.done`."""

    data: bytes
    entries: list[_Entry]
    events: list[StoredEvent] = field(default_factory=list)


class Outbox:
    """The byte-bounded send queue of one connection (a FIFO of frames).

    Args:
        limit_bytes: The bound; see the module docstring for how it applies.
        batch: Pack consecutive events into one JSON array frame (``?batch=1``).
    """

    def __init__(self, limit_bytes: int, *, batch: bool) -> None:
        self.limit_bytes = limit_bytes
        self.batch = batch
        self._entries: deque[_Entry] = deque()
        self.total_bytes = 0  # queued + in flight
        self.live_bytes = 0  # the part of total_bytes that is live
        self.peak_bytes = 0  # the most ever held: memory per connection stays bounded
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._progress = asyncio.Event()
        self._inflight = 0

    # Public methods

    @property
    def empty(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._entries and self._inflight == 0

    def put_control(self, data: bytes) -> bool:
        """Queue a control frame; return ``False`` if the client is now a slow consumer."""
        self._push(_Entry(data, live=True))
        return self.live_bytes <= self.limit_bytes

    def put_events(
        self, owner: Subscription | None, events: list[StoredEvent], *, live: bool
    ) -> bool:
        """Queue a batch of events; return ``False`` if live bytes now exceed the bound.

        ``owner`` is the subscription whose position the events advance once
        sent (``None`` for an event that belongs to no subscription).
        """
        for ev in events:
            self._push(_Entry(ev.raw, live, owner, ev))
        return not live or self.live_bytes <= self.limit_bytes

    async def wait_room(self) -> None:
        """Wait until the outbox is below its bound (catch-up pacing)."""
        await self._room.wait()

    async def next_frame(self) -> OutFrame:
        """Wait for something to send and take the next frame (the writer's side)."""
        while not self._entries:
            self._ready.clear()
            await self._ready.wait()
        first = self._entries.popleft()
        taken = [first]
        if first.event is not None and self.batch:
            size = len(first.data)
            while self._entries:
                nxt = self._entries[0]
                if nxt.event is None or size + len(nxt.data) + 1 > MAX_BATCH_FRAME_BYTES:
                    break
                taken.append(self._entries.popleft())
                size += len(nxt.data) + 1
            data = pack_events([e.data for e in taken])
        else:
            data = first.data
        self._inflight += 1
        events = [e.event for e in taken if e.event is not None]
        return OutFrame(data, taken, events)

    def done(self, frame: OutFrame) -> None:
        """The socket accepted ``frame``: release its bytes, advance its subscriptions."""
        self._inflight -= 1
        for entry in frame.entries:
            self._release(entry)
            if entry.owner is not None and entry.event is not None:
                entry.owner.sent_seq = entry.event.seq
        self._progress.set()

    def purge(self, owner: Subscription) -> None:
        """Drop what ``owner`` queued and was not taken yet (unsubscribe, replace)."""
        kept: deque[_Entry] = deque()
        for entry in self._entries:
            if entry.owner is owner:
                self._release(entry)
            else:
                kept.append(entry)
        self._entries = kept
        self._progress.set()

    async def wait_progress(self) -> None:
        """Wait until a frame is sent or entries are dropped (clear, then check, then wait)."""
        await self._progress.wait()

    def clear_progress(self) -> None:
        """Re-arm :meth:`wait_progress`; call before checking the condition waited for."""
        self._progress.clear()

    # Private methods

    def _push(self, entry: _Entry) -> None:
        size = len(entry.data)
        self._entries.append(entry)
        self.total_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.total_bytes)
        if entry.live:
            self.live_bytes += size
        if self.total_bytes >= self.limit_bytes:
            self._room.clear()
        self._ready.set()

    def _release(self, entry: _Entry) -> None:
        size = len(entry.data)
        self.total_bytes -= size
        if entry.live:
            self.live_bytes -= size
        if self.total_bytes < self.limit_bytes:
            self._room.set()


class Subscription:
    """One thread followed by one connection: catch-up, then live, each event once.

    Args:
        thread_id: The thread followed.
        follower: The follower, already started at the requested position.
        head: The thread's head when the follow started; below it the
            subscription is catching up (paced), from it on it is live.
        outbox: The connection's send queue.
        bridge: For re-following after lost history.
        batch_size: Events per read (``catchup_batch``).
        fail: Closes the connection with a code and reason (slow consumer,
            log gone); must not block.
    """

    def __init__(
        self,
        thread_id: str,
        follower: Follower,
        head: int,
        *,
        outbox: Outbox,
        bridge: Bridge,
        batch_size: int,
        fail: Callable[[int, str], None],
    ) -> None:
        self.thread_id = thread_id
        self.follower = follower
        self.head = head
        #: The seq of the last event of this subscription the socket accepted.
        self.sent_seq = follower.start.after_seq
        self.task: asyncio.Task[None] | None = None
        self._outbox = outbox
        self._bridge = bridge
        self._batch_size = batch_size
        self._fail = fail
        self._stopping = False
        self._failed = False

    # Public methods

    @property
    def catching_up(self) -> bool:
        """Whether the subscription is still reading what existed when it started."""
        return self.follower.cursor < self.head

    async def run(self) -> None:
        """Move events from the log to the outbox until cancelled or the connection fails."""
        while True:
            live = not self.catching_up
            if not live:
                await self._outbox.wait_room()
            try:
                batch = await self.follower.next_batch(self._batch_size)
            except FOLLOWER_ENDINGS as ending:
                if follows_again(ending):
                    logger.info("subscription to %s lost history: %s", self.thread_id, ending)
                    if not await self._refollow():
                        return
                    continue
                if self._stopping:
                    return  # we closed it: unsubscribed or replaced
                # The log itself closed under a live connection: tell the client
                # to come back (it resumes from its position).
                self._fail(CloseCode.GOING_AWAY, "event log closed")
                return
            if not self._outbox.put_events(self, batch, live=live):
                self._fail(CloseCode.SLOW_CONSUMER, "slow consumer: resume from the log")
                return
            if live and isinstance(self.follower, StreamFollower):
                # Live: take each commit straight from the log's notification
                # (no task wake-up per event); back to next_batch when the
                # tail cannot answer or the follower closes.
                await self.follower.push(self._put_live, self._batch_size)
                if self._failed:
                    return

    def _put_live(self, batch: list[StoredEvent]) -> bool:
        """The push sink: queue live events; a slow consumer fails the connection."""
        if self._outbox.put_events(self, batch, live=True):
            return True
        self._failed = True
        self._fail(CloseCode.SLOW_CONSUMER, "slow consumer: resume from the log")
        return False

    async def stop(self) -> None:
        """Cancel the task, close the follower and drop what was queued but not sent."""
        self._stopping = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            # wait() never raises the task's outcome (its done-callback reports
            # that) but does propagate our own cancellation.
            await asyncio.wait([task])
        await self.follower.aclose()
        self._outbox.purge(self)

    # Private methods

    async def _refollow(self) -> bool:
        """Follow again from (epoch, cursor) and say where delivery really restarts.

        The new start is ``recovered: false`` (the history is gone): an
        unsolicited ``subscribed`` frame tells the client, never a silent gap.
        """
        self.follower = await replace_follower(self._bridge, self.thread_id, self.follower)
        self.head = (await self._bridge.info(self.thread_id)).last_seq
        start = self.follower.start
        frame = Subscribed(
            thread_id=self.thread_id,
            epoch=start.epoch,
            after_seq=start.after_seq,
            recovered=start.recovered,
        )
        if not self._outbox.put_control(encode_frame(frame)):
            self._fail(CloseCode.SLOW_CONSUMER, "slow consumer: resume from the log")
            return False
        return True


class TerminalForward:
    """Brings one run's terminal event to a connection that does not follow its thread.

    Whoever cancels a run is answered ``cancel_accepted`` and then gets the
    run's terminal event, subscribed to the thread or not. Subscribed, the
    subscription carries it. Not subscribed, the connection follows the
    thread from the position the cancel returned (which lies before that
    event) and forwards only the event whose ``run_id`` is the run's and
    whose type is terminal; its sub-runs' terminal events carry their own run
    ids. Then it stops. It also stops when the connection closes.

    A forward exists only while its connection does not follow the thread:
    when a subscription to the thread starts, :meth:`settle` hands over to it
    without a gap or a duplicate.

    Args:
        run_id: The cancelled run.
        thread_id: Its thread.
        follower: A follower of the thread, started before the run's terminal event.
        outbox: The connection's send queue.
        bridge: For reading history and re-following after lost history.
        batch_size: Events per read.
        fail: Closes the connection with a code and reason; must not block.
    """

    def __init__(
        self,
        run_id: str,
        thread_id: str,
        follower: Follower,
        *,
        outbox: Outbox,
        bridge: Bridge,
        batch_size: int,
        fail: Callable[[int, str], None],
    ) -> None:
        self.run_id = run_id
        self.thread_id = thread_id
        self.follower = follower
        self.task: asyncio.Task[None] | None = None
        #: Whether the terminal event was queued (or the forward handed over).
        self.done = False
        #: The seq of the last event looked at: everything up to it was not the one.
        self._scanned = follower.start.after_seq
        self._outbox = outbox
        self._bridge = bridge
        self._batch_size = batch_size
        self._fail = fail
        self._stopping = False

    # Public methods

    async def run(self) -> None:
        """Read the thread until the run's terminal event, queue it, stop."""
        while not self.done:
            try:
                batch = await self.follower.next_batch(self._batch_size)
            except FOLLOWER_ENDINGS as ending:
                if follows_again(ending):
                    logger.info("forward of %s lost history: %s", self.run_id, ending)
                    self.follower = await replace_follower(
                        self._bridge, self.thread_id, self.follower
                    )
                    continue
                if not self._stopping:
                    self._fail(CloseCode.GOING_AWAY, "event log closed")
                return
            self._look_at(batch)
        await self.follower.aclose()

    async def settle(self, upto: int) -> None:
        """A subscription to the thread starts after ``upto``: hand the event over to it.

        The subscription delivers every event after ``upto``; if the terminal
        event lies at or before it (and was not queued yet), it is queued
        here, so it goes out before the subscription's reply and stream.
        """
        await self.stop()
        while not self.done and self._scanned < upto:
            limit = min(self._batch_size, upto - self._scanned)
            batch = await self._bridge.read(self.thread_id, self._scanned, limit)
            within = [ev for ev in batch if ev.seq <= upto]
            if not within:
                break  # trimmed, or nothing more: the subscription has the rest
            self._look_at(within)
        self.done = True

    async def stop(self) -> None:
        """Cancel the task and close the follower (what was queued stays queued)."""
        self._stopping = True
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        await self.follower.aclose()

    # Private methods

    def _look_at(self, batch: list[StoredEvent]) -> None:
        for ev in batch:
            self._scanned = ev.seq
            if ev.run_id == self.run_id and ev.type in TERMINAL_TYPES:
                self.done = True
                if not self._outbox.put_events(None, [ev], live=True):
                    self._fail(CloseCode.SLOW_CONSUMER, "slow consumer: resume from the log")
                return
