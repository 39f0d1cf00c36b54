"""The appender: the bounded buffer between ``emit()`` and the log, and its one writer.

Every event the bridge accepts is queued here, in order, and one task moves
what is queued to the log in batches (group append). What it does when the
log fails is the bridge's promise that nothing is dropped and one bad event
harms no one:

* A transient failure (:class:`~agentcast.errors.LogUnavailable`, an OS
  error, an append that exceeds ``append_timeout_s``) keeps the batch at the
  head of the line and retries it, after the bridge's backoff: order is
  kept, ``emit()`` callers wait, and new events queue behind up to
  ``emit_buffer`` (then ``emit()`` waits for room). A retried batch is no
  longer *fresh* (its previous attempt may have committed), so the log looks
  its event ids up and stores each event once.
* A permanent failure (anything else: an integrity error, a projector bug)
  rolled its append back. With several events in the batch the appender then
  appends them one at a time, so only the event at fault fails its
  ``emit()`` (:class:`~agentcast.errors.AppendRejected`).

Each attempt runs in a task of its own and is awaited through a shield, so
stopping the appender never abandons an append whose commit may still land:
:meth:`Appender.close` settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from .config import EngineSettings
from .errors import AgentcastError, AppendRejected, LogUnavailable, Unavailable
from .log.base import EventDraft, StoredEvent
from .metrics import EngineMetrics

__all__ = ["Appender"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    draft: EventDraft
    future: asyncio.Future[StoredEvent]
    queued_at: float


class Appender:
    """The emit buffer and the loop that group-appends it.

    Args:
        append: The log's append (looked up at each call: the bridge's log
            may be wrapped after start, e.g. by a test).
        settings: ``emit_buffer``, ``append_batch``, ``append_timeout_s``.
        metrics: Append metrics and ``events_emitted``.
        on_failure: Awaited after a transient failure (the bridge opens its
            ``append`` fault and sleeps its backoff).
        on_success: Called after a successful append (the bridge clears the
            fault, if open).
        internal_thread: Events of this stream (the health canaries) are not
            counted as emitted.
    """

    def __init__(
        self,
        append: Callable[[list[EventDraft]], Awaitable[list[StoredEvent]]],
        settings: EngineSettings,
        metrics: EngineMetrics,
        *,
        on_failure: Callable[[BaseException], Awaitable[None]],
        on_success: Callable[[], None],
        internal_thread: str,
    ) -> None:
        self._append = append
        self._settings = settings
        self._metrics = metrics
        self._on_failure = on_failure
        self._on_success = on_success
        self._internal_thread = internal_thread
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=settings.emit_buffer)
        self._inflight: list[_Pending] = []
        #: Append the in-flight batch one event at a time (after a refusal).
        self._isolating = False
        #: The append in flight and the events it carries (settled by close()).
        self._attempt: tuple[list[_Pending], asyncio.Future[list[StoredEvent]]] | None = None
        self._emitted: dict[str, Any] = {}  # events_emitted children by type

    @property
    def waiting(self) -> int:
        """Events accepted and not yet appended (queued or in flight)."""
        return self.queue.qsize() + len(self._inflight)

    async def submit(self, draft: EventDraft) -> StoredEvent:
        """Queue ``draft`` (waiting for room) and return it once committed."""
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(draft, future, time.perf_counter()))
        return await future

    async def run(self) -> None:
        """Group-append what is queued, for ever (see the module docstring)."""
        queue = self.queue
        while True:
            if not self._inflight:
                batch = [await queue.get()]
                while len(batch) < self._settings.append_batch and not queue.empty():
                    batch.append(queue.get_nowait())
                # Sampled once per batch (not per emit): the events left behind it.
                self._metrics.emit_buffer.set(queue.qsize())
                self._inflight = batch
                self._isolating = False
            take = self._inflight[:1] if self._isolating else list(self._inflight)
            attempt = asyncio.ensure_future(self._append_once([p.draft for p in take]))
            self._attempt = (take, attempt)
            try:
                stored = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                raise  # stopping: close() settles the attempt
            except Exception as exc:
                self._attempt = None
                if _transient(exc):
                    self._inflight = _retried(self._inflight)
                    await self._on_failure(exc)
                elif len(take) > 1:
                    self._isolating = True  # find the event at fault, one at a time
                else:
                    self._reject(take[0], exc)
                continue
            self._attempt = None
            self._settle(take, stored)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until everything queued was appended or failed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.queue.join()

    async def close(self) -> None:
        """After the loop stopped: settle the append in flight, fail what is left.

        The append in flight has its own deadline (``append_timeout_s``); if it
        committed, its callers get their events, never a false failure. What
        could not be appended fails its ``emit()`` with :class:`Unavailable`.
        """
        if self._attempt is not None:
            take, attempt = self._attempt
            self._attempt = None
            await asyncio.wait({attempt})
            if not attempt.cancelled() and attempt.exception() is None:
                self._settle(take, attempt.result())
        leftovers = list(self._inflight)
        while not self.queue.empty():
            leftovers.append(self.queue.get_nowait())
        for p in leftovers:
            if not p.future.done():
                p.future.set_exception(
                    Unavailable("the bridge closed before this event was appended")
                )
        self._inflight = []

    # Private methods

    async def _append_once(self, drafts: list[EventDraft]) -> list[StoredEvent]:
        """One append attempt, with a deadline: a log that never answers is an outage."""
        limit = self._settings.append_timeout_s
        try:
            async with asyncio.timeout(limit):
                return await self._append(drafts)
        except TimeoutError as exc:
            raise LogUnavailable(f"the append did not finish within {limit:g} s") from exc

    def _settle(self, take: list[_Pending], stored: list[StoredEvent]) -> None:
        """Hand committed events to their ``emit()`` callers."""
        del self._inflight[: len(take)]
        self._on_success()
        now = time.perf_counter()
        self._metrics.append_batch_size.observe(len(take))
        self._metrics.append_latency.observe_many([now - p.queued_at for p in take])
        self._metrics.emit_buffer.set(self.queue.qsize())
        self._count_emitted(take)
        for p, ev in zip(take, stored, strict=True):
            if not p.future.done():
                p.future.set_result(ev)
            self.queue.task_done()

    def _reject(self, pending: _Pending, exc: BaseException) -> None:
        """Fail one event the log refused for good; the appender goes on."""
        del self._inflight[:1]
        self._metrics.append_failures.inc()
        draft = pending.draft
        logger.error(
            "the log refused event %s (%s of run %s): %s",
            draft.event_id, draft.type, draft.run_id, exc, exc_info=exc,
        )  # fmt: skip
        if not pending.future.done():
            pending.future.set_exception(
                exc if isinstance(exc, AgentcastError) else AppendRejected(str(exc))
            )
        self.queue.task_done()

    def _count_emitted(self, batch: list[_Pending]) -> None:
        """``events_emitted`` by type: one locked increment per type per batch, not per event.

        The health probe's canaries are not emitted events and are not counted.
        """
        tally: dict[str, int] = {}
        for p in batch:
            draft = p.draft
            if draft.thread_id != self._internal_thread:
                tally[draft.type] = tally.get(draft.type, 0) + 1
        for event_type, n in tally.items():
            counter = self._emitted.get(event_type)
            if counter is None:  # one .labels() lookup per type
                counter = self._emitted[event_type] = self._metrics.events_emitted.labels(
                    type=event_type
                )
            counter.inc(n)


def _transient(exc: BaseException) -> bool:
    """An outage worth retrying, as opposed to a refusal of the event itself."""
    return isinstance(exc, LogUnavailable | OSError | TimeoutError)


def _retried(batch: list[_Pending]) -> list[_Pending]:
    """The batch for its next attempt: the last one may have committed, so no draft is fresh."""
    for pending in batch:
        if pending.draft.fresh:
            pending.draft = msgspec.structs.replace(pending.draft, fresh=False)
    return batch
