"""The byte-bounded send queue of one WebSocket connection.

docs/architecture.md invariant 6, "bounded everything": whatever a connection
has queued — control frames, live events and history being caught up — counts
against one budget, ``ws_send_queue_bytes``, from the moment it is queued
until the socket took it. The queue never holds more than the budget, except
that **one event may always be queued when the queue is empty**, so an event
as large as ``max_event_bytes`` (settings keep it ``<=`` the budget) always
goes through.

Two kinds of bytes share the budget, and a full queue means different things
for each:

* **Paced** bytes: history a subscription is catching up on (or live events it
  had to leave in the log for a while, see below). A paced writer waits for
  room (:meth:`Outbox.wait_fits`) before it reads the log, reads about as many
  events as fit, and queues each only if it fits: history stays in the log, not
  in memory, and catch-up never counts as lag.
* **Live** bytes: live events pushed from the log's commit notification, and
  control frames (replies, errors). A live event that does not fit while the
  queue holds paced bytes is not the client's fault (it is reading history): its
  subscription leaves it in the log and goes on paced. A live event that does
  not fit while everything queued is live means the client does not keep up
  with live events: the connection is a slow consumer (4008).

Events never take the last :attr:`Outbox.reserve_bytes` of the budget: that
reserve is for control frames, so a reply (a ``pong``, an ``error``) finds room
while history fills the queue. A control frame is refused — the connection is
a slow consumer — only when the control and live bytes themselves are past the
reserve and the budget is full: the client stopped reading even its replies.
(So the one case where the queue goes past the budget is a single event larger
than ``budget - reserve`` queued alone, plus replies within the reserve: set
``ws_send_queue_bytes`` at least ``max_event_bytes`` + 64 KiB to rule it out;
the defaults, 4 MiB and 1 MiB, do.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..log.base import StoredEvent
from ..protocol import pack_events

if TYPE_CHECKING:
    from .subscription import Subscription

__all__ = ["CONTROL_RESERVE_BYTES", "MAX_BATCH_FRAME_BYTES", "OutFrame", "Outbox"]

#: A ``?batch=1`` array frame holds events up to about this many bytes (a
#: single larger event still goes alone), so a frame stays well under the
#: default message size limits of client libraries (1 MiB for websockets).
MAX_BATCH_FRAME_BYTES: Final = 256 * 1024
#: The most of the budget kept for control frames (at most a quarter of it).
CONTROL_RESERVE_BYTES: Final = 64 * 1024


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
        limit_bytes: The budget (``ws_send_queue_bytes``); see the module docstring.
        batch: Pack consecutive events into one JSON array frame (``?batch=1``).
    """

    def __init__(self, limit_bytes: int, *, batch: bool) -> None:
        self.limit_bytes = limit_bytes
        #: Kept for control frames: events fill the queue up to ``limit - reserve``.
        self.reserve_bytes = min(CONTROL_RESERVE_BYTES, limit_bytes // 4)
        self.batch = batch
        self._entries: deque[_Entry] = deque()
        self.total_bytes = 0  # queued + in flight
        self.live_bytes = 0  # the part of total_bytes that is live (control and live events)
        self.peak_bytes = 0  # the most ever held: memory per connection stays bounded
        self._ready = asyncio.Event()
        self._released = asyncio.Event()  # bytes were released (broadcast; clear, check, wait)
        self._progress = asyncio.Event()
        self._inflight = 0

    # Public methods

    @property
    def empty(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._entries and self._inflight == 0

    @property
    def paced_bytes(self) -> int:
        """Queued bytes of history (or of live events left in the log for a while)."""
        return self.total_bytes - self.live_bytes

    @property
    def event_room(self) -> int:
        """How many more event bytes fit now (the reserve is not counted)."""
        return max(0, self.limit_bytes - self.reserve_bytes - self.total_bytes)

    def fits(self, size: int) -> bool:
        """Whether an event of ``size`` bytes may be queued now."""
        return self.empty or self.total_bytes + size <= self.limit_bytes - self.reserve_bytes

    def put_control(self, data: bytes) -> bool:
        """Queue a control frame; ``False`` (not queued) if the client is a slow consumer."""
        size = len(data)
        over = self.total_bytes + size > self.limit_bytes
        if over and self.live_bytes + size > self.reserve_bytes and not self.empty:
            return False
        self._push(_Entry(data, live=True))
        return True

    def offer(self, owner: Subscription | None, events: list[StoredEvent], *, live: bool) -> int:
        """Queue ``events`` in order while each fits; return how many were queued.

        ``owner`` is the subscription whose position the events advance once
        sent (``None`` for an event that belongs to no subscription). What
        was not queued is the caller's: it waits for room (paced) or, live
        with no paced bytes queued, the connection is a slow consumer.
        """
        queued = 0
        for ev in events:
            if not self.fits(len(ev.raw)):
                break
            self._push(_Entry(ev.raw, live, owner, ev))
            queued += 1
        return queued

    async def wait_fits(self, size: int) -> None:
        """Wait until an event of ``size`` bytes fits (pacing: history stays in the log)."""
        while True:
            self._released.clear()
            if self.fits(size):
                return
            await self._released.wait()

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
        self._ready.set()

    def _release(self, entry: _Entry) -> None:
        size = len(entry.data)
        self.total_bytes -= size
        if entry.live:
            self.live_bytes -= size
        self._released.set()
