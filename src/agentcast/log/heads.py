"""The stream heads the SQLite log keeps in memory, and why they never go back.

This process is the database's only writer (the data directory's lock), so
:meth:`SqliteLog.info <agentcast.log.sqlite.SqliteLog.info>` answers from a
bounded cache of stream infos that every commit callback advances; only a
miss reads the database. A reconnect storm — thousands of ``subscribe`` with
``after_seq`` — then costs no database round trip for the position.

Kept apart from the log's SQL: the rules here are about ordering on the
event loop, not about transactions.

* **Values only ever move forward**: ``last_seq`` and ``first_seq`` are merged
  with ``max``, so a read that raced a commit can never move a stream back.
* **A miss is the one case the commit callback cannot reach** (nothing is
  cached yet), so while a look-up of a thread is in flight the callbacks
  record that thread's committed head and trim in its :class:`Lookup`, and
  the look-up merges them before caching: a commit landing during the read
  is never lost.
* **An unknown outcome is not cached**: when the writer died with a write of
  the thread in flight, the head is forgotten and a look-up in flight answers
  without caching, so the next call reads the database again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from .base import StoredEvent, StreamInfo

__all__ = ["DEFAULT_INFO_THREADS", "Lookup", "StreamHeads"]

#: Stream infos kept in memory (least recently used evicted; a miss reads the database).
DEFAULT_INFO_THREADS: Final = 100_000


@dataclass(slots=True)
class Lookup:
    """What commits told us about a thread while its stream row was being read.

    The commit callbacks only move cached infos; a thread being looked up is
    not cached yet, so they record here instead and the look-up merges it.
    """

    #: ``info`` calls of this thread waiting for the database.
    waiting: int = 0
    #: Highest ``first_seq`` set by a trim committed meanwhile (0: none).
    first_seq: int = 0
    #: Highest ``seq`` committed meanwhile (0: none).
    last_seq: int = 0
    #: A write of this thread ended with an unknown outcome: do not cache.
    uncertain: bool = False


class StreamHeads:
    """A bounded, least-recently-used cache of stream infos that only moves forward.

    Every method runs on the event loop; commit callbacks call
    :meth:`advance` and :meth:`trimmed` in commit order.

    Args:
        max_infos: Bound of stream infos kept (the least recently used is evicted).
    """

    def __init__(self, max_infos: int = DEFAULT_INFO_THREADS) -> None:
        if max_infos < 1:
            raise ValueError("max_infos must be >= 1")
        #: The cached infos, least recently used first.
        self.infos: OrderedDict[str, StreamInfo] = OrderedDict()
        self._max_infos = max_infos
        self._lookups: dict[str, Lookup] = {}

    def get(self, thread_id: str) -> StreamInfo | None:
        """The cached info of ``thread_id`` (now the most recently used), or ``None``."""
        cached = self.infos.get(thread_id)
        if cached is not None:
            self.infos.move_to_end(thread_id)
        return cached

    @contextmanager
    def lookup(self, thread_id: str) -> Iterator[Lookup]:
        """While the body reads ``thread_id``'s stream row, record the commits it may miss.

        Concurrent look-ups of one thread share one record; it is dropped
        when the last of them ends. Pass it to :meth:`looked_up` afterwards.
        """
        pending = self._lookups.get(thread_id)
        if pending is None:
            pending = self._lookups[thread_id] = Lookup()
        pending.waiting += 1
        try:
            yield pending
        finally:
            pending.waiting -= 1
            if pending.waiting == 0 and self._lookups.get(thread_id) is pending:
                del self._lookups[thread_id]

    def looked_up(self, thread_id: str, pending: Lookup, row: StreamInfo) -> StreamInfo:
        """The info to answer for ``row`` as read: merged with what committed meanwhile, cached."""
        info = StreamInfo(
            row.epoch, max(row.first_seq, pending.first_seq), max(row.last_seq, pending.last_seq)
        )
        if pending.uncertain:
            return info  # a write of unknown outcome: answer, but let the next call re-read
        return self.remember(thread_id, info)

    def remember(self, thread_id: str, info: StreamInfo) -> StreamInfo:
        """Cache what the database said, never moving a cached stream back."""
        cached = self.infos.get(thread_id)
        if cached is not None and cached.epoch == info.epoch:
            info = StreamInfo(
                info.epoch,
                max(info.first_seq, cached.first_seq),
                max(info.last_seq, cached.last_seq),
            )
        self.infos[thread_id] = info
        self.infos.move_to_end(thread_id)
        while len(self.infos) > self._max_infos:
            self.infos.popitem(last=False)
        return info

    def advance(self, events: list[StoredEvent]) -> None:
        """Move cached heads past committed events (on the loop, in commit order).

        A thread being looked up is not cached yet: its head is recorded for
        the look-up to merge, or the look-up would cache a row read before
        this commit (a resuming client at the real head would then be told
        ``recovered: false`` and replay everything).
        """
        heads = {event.thread_id: event.seq for event in events}  # seq order per thread
        infos = self.infos
        lookups = self._lookups
        for thread_id, seq in heads.items():
            cached = infos.get(thread_id)
            if cached is not None and cached.last_seq < seq:
                infos[thread_id] = StreamInfo(cached.epoch, cached.first_seq, seq)
            if lookups:
                pending = lookups.get(thread_id)
                if pending is not None and pending.last_seq < seq:
                    pending.last_seq = seq

    def trimmed(self, thread_id: str, first_seq: int) -> None:
        """A trim of ``thread_id`` up to ``first_seq`` committed: move its first seq forward."""
        cached = self.infos.get(thread_id)
        if cached is not None and cached.first_seq < first_seq:
            self.infos[thread_id] = StreamInfo(cached.epoch, first_seq, cached.last_seq)
        pending = self._lookups.get(thread_id)
        if pending is not None and pending.first_seq < first_seq:
            pending.first_seq = first_seq

    def forget(self, thread_id: str) -> None:
        """A write of ``thread_id`` may have committed unseen: drop its head, cache no look-up."""
        self.infos.pop(thread_id, None)
        pending = self._lookups.get(thread_id)
        if pending is not None:
            pending.uncertain = True

    def clear(self) -> None:
        """Forget every cached info (look-ups in flight keep their records)."""
        self.infos.clear()
