"""Retention: trim each thread's old events in the background, whole runs at a time.

Without a bound (the default) the log keeps every event. With
``retention_max_age_s`` and/or ``retention_max_events`` set, the engine runs a
:class:`RetentionSweeper` every ``retention_interval_s``. The exact rule
(docs/event-log.md, "Retention"):

* An event is **expired** when it is older than ``max_age_s`` (``ts < now -
  max_age_s``) or lies beyond the newest ``max_events`` of its thread (``seq <=
  head - max_events``); with both bounds set, either one expires it.
* A **boundary** is a seq where a top-level run's ``agent_started`` sits, or
  ``head + 1``, such that no run's events (sub-runs included) straddle it: no
  run has ``first_seq < boundary <= last_seq``. Cutting there trims a run with
  all its sub-runs, or keeps them all.
* The **cut** is the largest boundary ``b`` such that every retained event
  with ``seq < b`` is expired and no active (queued or running) run has its
  ``first_seq`` below ``b``. ``EventLog.trim(thread_id, cut)`` then deletes
  those events; so a thread keeps at least ``max_events`` events (whole runs),
  and the run in progress keeps all of its events from its ``agent_started``.

Only events are deleted: thread, run and message rows stay, so the run list
and a thread's history do not depend on retention. A client resuming from a
trimmed position gets ``recovered: false`` (``log.base.resolve_start``).

Each pass is bounded: it examines at most ``threads_per_pass`` threads
(resuming where the last pass stopped, round-robin) and each delete removes
at most ``events_per_delete`` events (more only when one run alone is
larger: a run is never split), so it never holds the writer for long. A log
outage ends the pass loudly (logged, ``agentcast_retention_sweeps_total
{result="error"}``) and the next interval retries from the same thread.
Internal streams (the bridge's health canary, which trims itself) have no
thread row, so the sweep never sees them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .config import EngineSettings
from .errors import LogUnavailable
from .log.base import EventLog, StreamInfo
from .metrics import EngineMetrics
from .store.base import RunSpan, Store

__all__ = [
    "DEFAULT_EVENTS_PER_DELETE",
    "DEFAULT_THREADS_PER_PASS",
    "RetentionPolicy",
    "RetentionSweeper",
    "SweepResult",
    "boundaries",
    "plan_cut",
]

logger = logging.getLogger(__name__)

#: Threads examined per pass: at 1,000 per minute, 100,000 threads take 100 minutes.
DEFAULT_THREADS_PER_PASS: Final = 1000
#: Events removed by one delete (one writer op); a single larger run is removed whole.
DEFAULT_EVENTS_PER_DELETE: Final = 1000
#: Events read per page while looking for the first unexpired one (age bound).
_READ_PAGE: Final = 256


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The bounds of retention and of each sweep pass.

    ``max_age_s`` and ``max_events`` are the settings ``retention_max_age_s``
    and ``retention_max_events``; ``None`` means no bound of that kind.
    """

    max_age_s: float | None = None
    max_events: int | None = None
    interval_s: float = 60.0
    threads_per_pass: int = DEFAULT_THREADS_PER_PASS
    events_per_delete: int = DEFAULT_EVENTS_PER_DELETE

    def __post_init__(self) -> None:
        # Settings validate their own values; these checks guard direct construction.
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError("max_age_s must be > 0")
        if self.max_events is not None and self.max_events < 1:
            raise ValueError("max_events must be >= 1")
        if self.interval_s <= 0 or self.threads_per_pass < 1 or self.events_per_delete < 1:
            raise ValueError("interval_s, threads_per_pass and events_per_delete must be > 0")

    @property
    def bounded(self) -> bool:
        """Whether any bound is set (without one, nothing is ever trimmed)."""
        return self.max_age_s is not None or self.max_events is not None

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> RetentionPolicy:
        """The policy the ``retention_*`` settings describe."""
        return cls(
            max_age_s=settings.retention_max_age_s,
            max_events=settings.retention_max_events,
            interval_s=settings.retention_interval_s,
        )


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one pass did."""

    #: Threads examined.
    threads: int
    #: Events deleted.
    trimmed: int
    #: Threads skipped because trimming them failed (logged; retried next cycle).
    failed: int
    #: The pass reached the last thread: the next one starts again from the first.
    wrapped: bool


def boundaries(spans: Sequence[RunSpan], first_seq: int, head: int) -> list[int]:
    """The valid cut points in ``(first_seq, head + 1]``, ascending.

    A candidate is a top-level run's ``first_seq`` (its ``agent_started``) or
    ``head + 1``; it is valid when no run's events straddle it (no span has
    ``first_seq < b <= last_seq``), so a cut there never separates a run from
    its sub-runs, nor one run's events from each other.
    """
    starts_of_top = {
        s.first_seq for s in spans if s.parent_run_id is None and s.first_seq is not None
    }
    candidates = sorted(b for b in starts_of_top if first_seq < b <= head)
    candidates.append(head + 1)
    # Merge the positions each span covers, (first_seq, last_seq], into disjoint ranges.
    covered: list[list[int]] = []
    for lo, hi in sorted(
        (s.first_seq + 1, s.last_seq)
        for s in spans
        if s.first_seq is not None and s.last_seq is not None and s.last_seq > s.first_seq
    ):
        if covered and lo <= covered[-1][1]:
            covered[-1][1] = max(covered[-1][1], hi)
        else:
            covered.append([lo, hi])
    starts = [c[0] for c in covered]
    valid = []
    for b in candidates:
        i = bisect.bisect_right(starts, b) - 1
        if i < 0 or b > covered[i][1]:
            valid.append(b)
    return valid


def plan_cut(cuts: Sequence[int], limit: int) -> int | None:
    """The largest of ``cuts`` (ascending) that is ``<= limit``, or ``None``."""
    i = bisect.bisect_right(cuts, limit)
    return cuts[i - 1] if i else None


class RetentionSweeper:
    """Applies a :class:`RetentionPolicy` to every thread, a bounded pass at a time.

    Args:
        log: The event log to trim (only ``info``, ``read`` and ``trim`` are used).
        store: Where threads and run spans are read (rows are never deleted).
        policy: The bounds.
        metrics: Counts trimmed events and passes by result.
        clock: Wall-clock time, as events' ``ts`` (injected by tests).
    """

    def __init__(
        self,
        log: EventLog,
        store: Store,
        policy: RetentionPolicy,
        *,
        metrics: EngineMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._log = log
        self._store = store
        self._metrics = metrics or EngineMetrics()
        self._clock = clock
        #: The last thread a pass finished with; the next pass starts after it.
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        #: The last failed pass's error (``None`` once a pass succeeds): a health signal.
        self.last_error: str | None = None

    # The background task ----------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start sweeping every ``interval_s`` (idempotent); the task is returned to watch."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="agentcast-retention")
        return self._task

    async def stop(self) -> None:
        """Stop the background task and wait for it (a pass in progress is cancelled)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            try:
                await self.sweep_once()
            except Exception as exc:  # loud, counted in sweep_once, retried next interval
                logger.warning(
                    "retention sweep failed, retrying in %gs: %r", self.policy.interval_s, exc
                )

    # One pass ---------------------------------------------------------------------

    async def sweep_once(self) -> SweepResult:
        """Examine the next ``threads_per_pass`` threads and trim each to its cut.

        Raises:
            LogUnavailable: the log or store is down; the pass stopped, and the
                next one resumes from the thread that failed.
        """
        trimmed = failed = 0
        try:
            ids = await self._store.thread_ids(self._cursor, self.policy.threads_per_pass)
            for thread_id in ids:
                try:
                    trimmed += await self.trim_thread(thread_id)
                except LogUnavailable:
                    raise
                except Exception:
                    # One thread's failure must not stop retention for every other one.
                    failed += 1
                    logger.exception("retention: trimming thread %s failed; skipped", thread_id)
                self._cursor = thread_id
        except Exception as exc:
            self.last_error = repr(exc)
            self._metrics.retention_sweeps.labels(result="error").inc()
            raise
        wrapped = len(ids) < self.policy.threads_per_pass
        if wrapped:
            self._cursor = None
        self.last_error = None if not failed else f"{failed} thread(s) failed"
        self._metrics.retention_sweeps.labels(result="error" if failed else "ok").inc()
        return SweepResult(len(ids), trimmed, failed, wrapped)

    async def trim_thread(self, thread_id: str) -> int:
        """Trim one thread to its cut (module docstring); return the events deleted."""
        # The head is read before the runs: a run that starts after this read
        # has its agent_started above the head, so no cut can reach it.
        info = await self._log.info(thread_id)
        if info.first_seq > info.last_seq:
            return 0
        limit = self._size_limit(info)
        if limit <= info.first_seq and self.policy.max_age_s is None:
            return 0
        spans = await self._store.run_spans(thread_id, info.first_seq)
        cuts = boundaries(spans, info.first_seq, info.last_seq)
        active = [s.first_seq for s in spans if s.is_active and s.first_seq is not None]
        ceiling = min([*active, info.last_seq + 1])
        top = plan_cut(cuts, ceiling)
        if top is None:
            return 0
        if self.policy.max_age_s is not None:
            limit = await self._first_unexpired(thread_id, limit, top)
        cut = plan_cut(cuts, min(limit, top))
        if cut is None:
            return 0
        return await self._trim_to(thread_id, info.first_seq, cut, cuts)

    # Private methods ----------------------------------------------------------------

    def _size_limit(self, info: StreamInfo) -> int:
        """The first seq the size bound keeps (``first_seq`` when it keeps everything)."""
        if self.policy.max_events is None:
            return info.first_seq
        return max(info.first_seq, info.last_seq + 1 - self.policy.max_events)

    async def _first_unexpired(self, thread_id: str, start: int, stop: int) -> int:
        """The first seq ``>= start`` that the age bound keeps, or ``stop`` if none below it.

        Events below ``start`` are expired by the size bound already; reading
        stops at ``stop`` (no cut can go past it), so a pass reads at most the
        events it may delete plus one page.
        """
        assert self.policy.max_age_s is not None
        cutoff = self._clock() - self.policy.max_age_s
        after = start - 1
        while after + 1 < stop:
            events = await self._log.read(thread_id, after, min(_READ_PAGE, stop - 1 - after))
            if not events:
                return stop
            for event in events:
                if event.ts >= cutoff:
                    return event.seq
            after = events[-1].seq
        return stop

    async def _trim_to(self, thread_id: str, first_seq: int, cut: int, cuts: list[int]) -> int:
        """Trim up to ``cut`` in steps of at most ``events_per_delete`` events, at boundaries."""
        total = 0
        while first_seq < cut:
            step = plan_cut(cuts, min(cut, first_seq + self.policy.events_per_delete))
            if step is None or step <= first_seq:
                # One run alone is larger than a step: delete it whole, never split it.
                step = cuts[bisect.bisect_right(cuts, first_seq)]
            deleted = await self._log.trim(thread_id, step)
            total += deleted
            self._metrics.events_trimmed.inc(deleted)
            first_seq = step
            await asyncio.sleep(0)  # let appends and reads in between deletes
        return total
