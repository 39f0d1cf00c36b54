"""Admission and ordering of runs: per-thread, per-user and global limits.

Pure bookkeeping, no I/O: the runner asks it what may start and tells it what
started and ended. The rules (docs/python-api.md, "Starting and cancelling
runs"):

* a thread runs one top-level run at a time; the others wait in FIFO order;
* a user runs at most ``max_runs_per_user`` at once; more wait as ``queued``,
  FIFO, up to ``max_queued_per_user`` (then ``limit_exceeded``);
* at most ``max_concurrent_runs`` run in the whole process;
* sub-runs count toward none of these (they run inside their parent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import LimitExceeded

__all__ = ["Scheduler", "Slot"]

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Slot(Generic[T]):
    """One top-level run as the scheduler sees it."""

    run_id: str
    thread_id: str
    user_id: str
    item: T
    queue_pos: int = 0


@dataclass(slots=True)
class Scheduler(Generic[T]):
    """FIFO admission under the three limits."""

    max_runs_per_user: int
    max_queued_per_user: int
    max_queued_per_thread: int
    max_concurrent_runs: int
    _queue: list[Slot[T]] = field(default_factory=list)
    _running: dict[str, Slot[T]] = field(default_factory=dict)
    _thread_running: dict[str, Slot[T]] = field(default_factory=dict)
    _user_running: Counter[str] = field(default_factory=Counter)
    _user_queued: Counter[str] = field(default_factory=Counter)

    # Queries ----------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        """Top-level runs running now."""
        return len(self._running)

    @property
    def queued_count(self) -> int:
        """Top-level runs waiting to start."""
        return len(self._queue)

    def running_in_thread(self, thread_id: str) -> Slot[T] | None:
        """The thread's running run, if any."""
        return self._thread_running.get(thread_id)

    def queued_in_thread(self, thread_id: str) -> list[Slot[T]]:
        """The thread's waiting runs, in the order they will run."""
        return [s for s in self._queue if s.thread_id == thread_id]

    def active_in_thread(self, thread_id: str) -> list[Slot[T]]:
        """Running then queued runs of the thread."""
        running = self._thread_running.get(thread_id)
        return ([running] if running else []) + self.queued_in_thread(thread_id)

    def queued_slots(self) -> list[Slot[T]]:
        """Every waiting run, in the order they would start."""
        return list(self._queue)

    def all_slots(self) -> list[Slot[T]]:
        """Every running and queued run."""
        return [*self._running.values(), *self._queue]

    # Changes --------------------------------------------------------------------------

    def check_admission(
        self, user_id: str, thread_id: str, *, thread_busy: bool, replacing: int = 0
    ) -> None:
        """Raise :class:`LimitExceeded` if a new run of ``user_id`` may not wait.

        A run that can start at once never counts against the queue bounds.
        ``replacing`` is how many of the thread's queued runs the new one
        replaces (an ``interrupt``): they leave the line, so they do not count.
        """
        would_wait = (
            thread_busy
            or self._user_running[user_id] >= self.max_runs_per_user
            or len(self._running) >= self.max_concurrent_runs
        )
        if not would_wait:
            return
        if self._user_queued[user_id] - replacing >= self.max_queued_per_user:
            raise LimitExceeded(
                f"at most {self.max_queued_per_user} runs may wait per user", "max_queued_per_user"
            )
        in_thread = len(self.queued_in_thread(thread_id)) - replacing
        if thread_busy and in_thread >= self.max_queued_per_thread:
            raise LimitExceeded(
                f"at most {self.max_queued_per_thread} runs may wait per thread",
                "max_queued_per_thread",
            )

    def enqueue(self, slot: Slot[T]) -> None:
        """Add a run at the end of the line (kept ordered by ``queue_pos``)."""
        self._queue.append(slot)
        self._queue.sort(key=lambda s: s.queue_pos)
        self._user_queued[slot.user_id] += 1

    def remove_queued(self, slot: Slot[T]) -> bool:
        """Take a waiting run out of the line; ``False`` if it was not waiting."""
        try:
            self._queue.remove(slot)
        except ValueError:
            return False
        self._decrement(self._user_queued, slot.user_id)
        return True

    def take_startable(self) -> list[Slot[T]]:
        """Move every run that may start now from the line to running, in FIFO order."""
        started: list[Slot[T]] = []
        seen_threads: set[str] = set()
        for slot in list(self._queue):
            if len(self._running) >= self.max_concurrent_runs:
                break
            if slot.thread_id in seen_threads:
                continue  # the thread's earlier run goes first (FIFO per thread)
            seen_threads.add(slot.thread_id)
            if slot.thread_id in self._thread_running:
                continue
            if self._user_running[slot.user_id] >= self.max_runs_per_user:
                continue
            self.remove_queued(slot)
            self._running[slot.run_id] = slot
            self._thread_running[slot.thread_id] = slot
            self._user_running[slot.user_id] += 1
            started.append(slot)
        return started

    def finished(self, slot: Slot[T]) -> None:
        """A running run ended; its thread and user slots are free again."""
        if self._running.pop(slot.run_id, None) is None:
            return
        if self._thread_running.get(slot.thread_id) is slot:
            del self._thread_running[slot.thread_id]
        self._decrement(self._user_running, slot.user_id)

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]
