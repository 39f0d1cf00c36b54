"""A connection's per-thread subscriptions, feeding its send queue.

docs/architecture.md, "One direction of flow": nothing writes to a socket except a
subscription reading the log. Each :class:`Subscription` follows one thread
with a :class:`~agentcast.log.base.Follower` and puts what it reads into the
connection's :class:`~agentcast.gateway.outbox.Outbox`; one writer task per
connection drains the outbox onto the socket.

Backpressure (invariant 6, "bounded everything"; the rules of the budget are
in :mod:`agentcast.gateway.outbox`):

* The outbox is bounded in **bytes** (``ws_send_queue_bytes``): control frames,
  live events and history together, counting a frame until the socket took it.
* **Catch-up is paced from the log**: while a subscription is reading history
  (its cursor is below the head that existed when it started) it waits for
  room, reads about as many events as the room holds (an estimate from the
  sizes seen so far) and queues each only if it fits; the few a read brought
  beyond the room wait in the subscription for the next room. History stays in
  the log, not in memory, and catch-up never counts as lag.
* **Live lag is not tolerated**: a live event that does not fit while every
  queued byte is live makes the connection a slow consumer, closed with 4008.
  The client resumes from the log; the agents and every other connection never
  wait for it. When the room is held by history instead, the subscription
  goes on paced (its events wait in the log) until it has caught up again.

A :class:`TerminalForward` is the one exception to "a subscription per
followed thread": it brings a connection that cancelled a run in a thread it
does not follow that run's terminal event, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from ..bridge import Bridge
from ..errors import CloseCode
from ..events import TERMINAL_TYPES
from ..log.base import Follower, StoredEvent
from ..log.follower import StreamFollower
from ..protocol import Subscribed, encode_frame
from .outbox import MAX_BATCH_FRAME_BYTES, Outbox, OutFrame
from .refollow import FOLLOWER_ENDINGS, follows_again, replace_follower

__all__ = ["MAX_BATCH_FRAME_BYTES", "OutFrame", "Outbox", "Subscription", "TerminalForward"]

logger = logging.getLogger(__name__)

_SLOW: Final = "slow consumer: resume from the log"


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
        #: Read from the log but not queued yet (no room): queued first, paced.
        self._held: deque[StoredEvent] = deque()
        #: Live events waited in the log for room held by history: read paced until caught up.
        self._paced = False
        self._avg_size = 0.0  # of the events read so far: sizes paced reads to the room

    # Public methods

    @property
    def catching_up(self) -> bool:
        """Whether the subscription is still reading what existed when it started."""
        return self.follower.cursor < self.head

    async def run(self) -> None:
        """Move events from the log to the outbox until cancelled or the connection fails."""
        while True:
            if self._held:
                await self._flush_held()
            paced = self._paced or self.catching_up
            want = self._batch_size
            if paced:
                await self._outbox.wait_fits(int(self._avg_size))
                want = self._read_size()
            try:
                batch = await self.follower.next_batch(want)
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
            if paced:
                self._measure(batch)
                self._held.extend(batch)
                # A short read reached the log's head: what comes next is live.
                self._paced = self._paced and len(batch) >= want
                continue
            if not self._put_live(batch):
                if self._failed:
                    return
                continue  # room held by history: go on paced
            if isinstance(self.follower, StreamFollower):
                # Live: take each commit straight from the log's notification
                # (no task wake-up per event); back to next_batch when the
                # tail cannot answer, the follower closes or there is no room.
                await self.follower.push(self._put_live, self._batch_size)
                if self._failed:
                    return

    def _put_live(self, batch: list[StoredEvent]) -> bool:
        """The push sink: queue live events; ``False`` once they no longer fit.

        What does not fit waits in the subscription (paced from then on) when
        the room is held by history; when every queued byte is live, the client
        does not keep up with live events: a slow consumer.
        """
        self._measure(batch)
        queued = self._outbox.offer(self, batch, live=True)
        if queued == len(batch):
            return True
        if self._outbox.paced_bytes > 0:
            self._held.extend(batch[queued:])
            if not self._paced:
                logger.debug(
                    "live events of %s wait in the log: history holds the queue", self.thread_id
                )
            self._paced = True
            return False
        self._failed = True
        self._fail(CloseCode.SLOW_CONSUMER, _SLOW)
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
        self._held.clear()
        self._outbox.purge(self)

    # Private methods

    async def _flush_held(self) -> None:
        """Queue what was read but did not fit, in order, each as soon as it fits."""
        while self._held:
            await self._outbox.wait_fits(len(self._held[0].raw))
            queued = self._outbox.offer(self, list(self._held), live=False)
            for _ in range(queued):
                self._held.popleft()

    def _read_size(self) -> int:
        """Events to read now: about as many as the room holds (one when unknown)."""
        if self._avg_size <= 0:
            return 1
        fit = int(self._outbox.event_room // self._avg_size)
        return max(1, min(self._batch_size, fit))

    def _measure(self, batch: list[StoredEvent]) -> None:
        """Keep a running average of event sizes (the estimate paced reads are sized by)."""
        for ev in batch:
            size = len(ev.raw)
            self._avg_size = size if self._avg_size <= 0 else 0.9 * self._avg_size + 0.1 * size

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
        data = encode_frame(frame)
        await self._outbox.wait_fits(len(data))  # part of this stream: paced like it
        if not self._outbox.put_control(data):
            self._fail(CloseCode.SLOW_CONSUMER, _SLOW)
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
            await self._look_at(batch)
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
            await self._look_at(within)
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

    async def _look_at(self, batch: list[StoredEvent]) -> None:
        """Queue the run's terminal event if ``batch`` holds it; note how far was looked.

        The event is noted as looked at only once queued: should the forward
        be stopped while it waits for room, :meth:`settle` finds it again.
        """
        for ev in batch:
            if ev.run_id == self.run_id and ev.type in TERMINAL_TYPES:
                await self._queue(ev)
                self._scanned = ev.seq
                self.done = True
                return
            self._scanned = ev.seq

    async def _queue(self, ev: StoredEvent) -> None:
        """Queue ``ev`` like a live event: it waits for room held by history, never for lag."""
        while not self._outbox.offer(None, [ev], live=True):
            if self._outbox.paced_bytes == 0:
                self._fail(CloseCode.SLOW_CONSUMER, _SLOW)
                return
            await self._outbox.wait_fits(len(ev.raw))
