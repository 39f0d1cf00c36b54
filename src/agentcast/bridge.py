"""The bridge: the single source of truth and the only way an event is emitted.

Every event goes ``emit() → validate → stamp → bounded buffer → group append →
followers`` (docs/architecture.md, "One direction of flow"). The bridge owns the lifecycle
(:mod:`agentcast.lifecycle`), health probes, recovery and metrics:

* **Nothing is dropped** (invariant 8). A failed append keeps its batch at the
  head of the line and is retried with exponential backoff and jitter;
  ``emit()`` callers wait (agents pause at their next step), new events queue
  behind in order up to ``emit_buffer`` and then ``emit()`` waits for room.
* **Honest health.** The probe writes a canary to a reserved internal stream
  through the same buffer and appender as every event, and reads it back
  through a follower — the live path end to end. The first failed append or
  probe makes the bridge DEGRADED; after ``recovery_attempts`` consecutive
  failures it is FAILED (new runs refused) and keeps retrying at the longest
  interval; any full recovery returns it to ACTIVE.
* **Watched tasks.** A background task that dies makes the bridge DEGRADED
  and is restarted after a backoff; a passing probe clears the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .config import EngineSettings
from .errors import AgentcastError, AppendRejected, LogUnavailable, Unavailable
from .events import EventType, encode_payload
from .lifecycle import BridgeState, Lifecycle, StateObserver
from .log.base import EventDraft, EventLog, Follower, StoredEvent, StreamInfo
from .metrics import EngineMetrics
from .types import HEALTH_THREAD_PREFIX, new_event_id

__all__ = ["HEALTH_THREAD", "AgentWebSocketBridge", "Bridge", "HealthReport"]

logger = logging.getLogger(__name__)

#: The reserved stream health canaries are written to; never a user's thread.
HEALTH_THREAD: Final = f"{HEALTH_THREAD_PREFIX}_health__"
_HEALTH_RUN: Final = "__health__"
_CANARY_KEEP: Final = 64


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one probe."""

    ok: bool
    state: BridgeState
    latency_ms: float | None
    detail: str
    checked_at: float


@dataclass(slots=True)
class _Pending:
    draft: EventDraft
    future: asyncio.Future[StoredEvent]
    queued_at: float


class Bridge:
    """Validates, stamps and appends every event; watches its own health.

    Args:
        log: The event log every event is appended to.
        settings: Limits, intervals and backoff parameters.
        metrics: Where to record metrics (a fresh registry by default).
    """

    def __init__(
        self,
        log: EventLog,
        settings: EngineSettings | None = None,
        *,
        metrics: EngineMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.log = log
        self.settings = settings or EngineSettings()
        self.metrics = metrics or EngineMetrics()
        self._rng = rng or random.Random()
        self._lifecycle = Lifecycle()
        self._lifecycle.add_observer(self._on_state)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._inflight: list[_Pending] = []
        #: Append the in-flight batch one event at a time (after a refusal).
        self._isolating = False
        #: The append in flight and the events it carries (settled by close()).
        self._attempt: tuple[list[_Pending], asyncio.Future[list[StoredEvent]]] | None = None
        self._init_task: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._factories: dict[str, Callable[[], Awaitable[None]]] = {}
        self._faults: dict[str, str] = {}
        self._failures = 0
        self._health_wake = asyncio.Event()
        self._probe_requested = False
        self._closing = False
        self.last_report: HealthReport | None = None
        self._emitted: dict[str, Any] = {}  # events_emitted children by type

    # Public properties ---------------------------------------------------------

    @property
    def state(self) -> BridgeState:
        """The current lifecycle state."""
        return self._lifecycle.state

    @property
    def reason(self) -> str:
        """Why the bridge is in its current state."""
        return self._lifecycle.reason

    @property
    def accepting_runs(self) -> bool:
        """New runs may start (ACTIVE, or DEGRADED while recovery is under way)."""
        return self.state in (BridgeState.ACTIVE, BridgeState.DEGRADED) and not self._closing

    @property
    def faults(self) -> dict[str, str]:
        """The open faults by source (empty when ACTIVE)."""
        return dict(self._faults)

    def add_state_observer(self, observer: StateObserver) -> None:
        """Call ``observer(old, new, reason)`` after every state change."""
        self._lifecycle.add_observer(observer)

    # Start-up --------------------------------------------------------------------

    async def ensure_integration(self) -> None:
        """Start the bridge, once, however many callers ask at the same time.

        Idempotent: returns at once when already ACTIVE or DEGRADED. Concurrent
        callers share one initialisation (invariant 7). An initialisation that
        fails or exceeds ``init_timeout_s`` leaves the bridge FAILED and raises
        :class:`Unavailable`; a later call tries again.
        """
        if self.state in (BridgeState.ACTIVE, BridgeState.DEGRADED):
            return
        if self.state is BridgeState.CLOSED or self._closing:
            raise Unavailable("the bridge is closed")
        if self._tasks:
            # FAILED while running: the appender and the health loop are
            # still at work and return the bridge to ACTIVE when the log is
            # back. Initialising again would start a second appender and
            # reopen the log under every follower.
            self.request_health_check()
            raise Unavailable(f"the bridge is {self.state}: {self.reason}")
        if self._init_task is None or self._init_task.done():
            self._init_task = asyncio.create_task(self._initialize(), name="agentcast-init")
        await asyncio.shield(self._init_task)

    async def _initialize(self) -> None:
        self._lifecycle.transition(BridgeState.INITIALIZING, "starting")
        try:
            async with asyncio.timeout(self.settings.init_timeout_s):
                await self.log.open()
                self._queue = asyncio.Queue(maxsize=self.settings.emit_buffer)
                self._start_task("appender", self._append_loop)
                report = await self.check_health()
                if not report.ok:
                    raise Unavailable(f"initial health probe failed: {report.detail}")
        except BaseException as exc:
            await self._stop_tasks()
            await _close_logged(self.log)
            reason = "init timed out" if isinstance(exc, TimeoutError) else f"init failed: {exc}"
            self._lifecycle.transition(BridgeState.FAILED, reason)
            if isinstance(exc, Exception) and not isinstance(exc, Unavailable):
                raise Unavailable(reason) from exc
            raise
        self._faults.clear()
        self._failures = 0
        self._lifecycle.transition(BridgeState.ACTIVE, "initialised")
        self._start_task("health", self._health_loop)

    # Emitting --------------------------------------------------------------------

    async def emit(
        self,
        *,
        thread_id: str,
        run_id: str,
        event_type: str,
        data: Mapping[str, Any],
        agent: str | None = None,
        parent_run_id: str | None = None,
        event_id: str | None = None,
    ) -> StoredEvent:
        """Validate, stamp and durably append one event; return it with its seq.

        Waits while the log is unavailable (nothing is dropped). ``event_id``
        lets a caller retry an emit safely (the log stores it once).

        Raises:
            InvalidEvent: the payload breaks the contract; nothing is appended.
            Unavailable: the bridge is not started or is closed.
        """
        payload = encode_payload(event_type, data)
        draft = EventDraft(
            event_id or new_event_id(),
            thread_id,
            run_id,
            parent_run_id,
            event_type,
            time.time(),
            agent,
            payload,
            event_id is None,  # fresh: ours, never submitted before
        )
        return await self._submit(draft)

    async def _submit(self, draft: EventDraft) -> StoredEvent:
        queue = self._queue
        if queue is None or self.state in (BridgeState.CLOSED, BridgeState.UNINITIALIZED):
            raise Unavailable("the bridge is not running")
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(draft, future, time.perf_counter()))
        return await future

    async def _append_loop(self) -> None:
        """Group-append what is queued; retry an outage, isolate a rejected event.

        * A transient failure (:class:`LogUnavailable`, an OS error, an
          append that exceeds ``append_timeout_s``) keeps the batch at the
          head of the line and retries it with backoff: nothing is dropped,
          order is kept, and ``emit()`` callers wait.
        * A permanent failure (anything else: an integrity error, a
          projector bug) rolled its append back. With several events in the
          batch the appender then appends them one at a time, so only the
          event at fault fails its ``emit()``; everyone else goes on.

        Each attempt runs in a task of its own and is awaited through a
        shield, so stopping the appender never abandons an append whose
        commit may still land: :meth:`close` settles it.
        """
        assert self._queue is not None
        queue = self._queue
        while True:
            if not self._inflight:
                batch = [await queue.get()]
                while len(batch) < self.settings.append_batch and not queue.empty():
                    batch.append(queue.get_nowait())
                # Sampled once per batch (not per emit): the events left behind it.
                self.metrics.emit_buffer.set(queue.qsize())
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
                    await self._append_failed(exc)
                elif len(take) > 1:
                    self._isolating = True  # find the event at fault, one at a time
                else:
                    self._reject(take[0], exc)
                continue
            self._attempt = None
            self._settle(take, stored)

    async def _append_once(self, drafts: list[EventDraft]) -> list[StoredEvent]:
        """One append attempt, with a deadline: a log that never answers is an outage."""
        try:
            async with asyncio.timeout(self.settings.append_timeout_s):
                return await self.log.append(drafts)
        except TimeoutError as exc:
            raise LogUnavailable(
                f"the append did not finish within {self.settings.append_timeout_s:g} s"
            ) from exc

    def _settle(self, take: list[_Pending], stored: list[StoredEvent]) -> None:
        """Hand committed events to their ``emit()`` callers."""
        assert self._queue is not None
        del self._inflight[: len(take)]
        if "append" in self._faults:
            self._clear_fault("append")
        now = time.perf_counter()
        self.metrics.append_batch_size.observe(len(take))
        self.metrics.append_latency.observe_many([now - p.queued_at for p in take])
        self.metrics.emit_buffer.set(self._queue.qsize())
        self._count_emitted(take)
        for p, ev in zip(take, stored, strict=True):
            if not p.future.done():
                p.future.set_result(ev)
            self._queue.task_done()

    def _reject(self, pending: _Pending, exc: BaseException) -> None:
        """Fail one event the log refused for good; the bridge goes on."""
        assert self._queue is not None
        del self._inflight[:1]
        self.metrics.append_failures.inc()
        draft = pending.draft
        logger.error(
            "the log refused event %s (%s of run %s): %s",
            draft.event_id, draft.type, draft.run_id, exc, exc_info=exc,
        )  # fmt: skip
        if not pending.future.done():
            pending.future.set_exception(
                exc if isinstance(exc, AgentcastError) else AppendRejected(str(exc))
            )
        self._queue.task_done()

    def _count_emitted(self, batch: list[_Pending]) -> None:
        """``events_emitted`` by type: one locked increment per type per batch, not per event.

        The health probe's canaries are not emitted events and are not counted.
        """
        tally: dict[str, int] = {}
        for p in batch:
            draft = p.draft
            if draft.thread_id != HEALTH_THREAD:
                tally[draft.type] = tally.get(draft.type, 0) + 1
        for event_type, n in tally.items():
            counter = self._emitted.get(event_type)
            if counter is None:  # one .labels() lookup per type
                counter = self._emitted[event_type] = self.metrics.events_emitted.labels(
                    type=event_type
                )
            counter.inc(n)

    async def _append_failed(self, exc: BaseException) -> None:
        self.metrics.append_failures.inc()
        logger.warning("append failed (%s); retrying", exc)
        self._fault("append", f"append failed: {exc}")
        await asyncio.sleep(self._backoff())

    # Health and recovery ---------------------------------------------------------

    async def check_health(self) -> HealthReport:
        """Probe the live path now: canary append, then read back by a follower.

        A failure opens the ``probe`` fault (DEGRADED); a success clears probe
        and task faults. While appends are failing the appender's retries are
        the probe, so this only reports.
        """
        if "append" in self._faults:
            report = HealthReport(False, self.state, None, self._faults["append"], time.time())
            self.last_report = report
            return report
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                await self._probe()
        except Exception as exc:
            detail = "probe timed out" if isinstance(exc, TimeoutError) else f"probe failed: {exc}"
            self.metrics.health_checks.labels(result="failure").inc()
            if self.state is not BridgeState.INITIALIZING:
                self._fault("probe", detail)
            report = HealthReport(False, self.state, None, detail, time.time())
        else:
            latency = (time.perf_counter() - started) * 1000
            self.metrics.health_checks.labels(result="success").inc()
            for source in [s for s in self._faults if s == "probe" or s.startswith("task:")]:
                self._clear_fault(source)
            report = HealthReport(True, self.state, latency, "ok", time.time())
        self.last_report = report
        return report

    async def _probe(self) -> None:
        info = await self.log.info(HEALTH_THREAD)
        follower = await self.log.follow(HEALTH_THREAD, info.last_seq, info.epoch)
        try:
            nonce = new_event_id()
            stored = await self._submit(
                EventDraft(
                    nonce,
                    HEALTH_THREAD,
                    _HEALTH_RUN,
                    None,
                    EventType.CUSTOM,
                    time.time(),
                    None,
                    encode_payload(EventType.CUSTOM, {"name": "canary", "value": nonce}),
                )
            )
            batch = await follower.next_batch(1)
            if not batch or batch[0].event_id != nonce:
                raise LogUnavailable("the canary did not come back through the follow path")
            self.metrics.delivery_latency.observe(time.time() - stored.ts)
        finally:
            await follower.aclose()
        if stored.seq > _CANARY_KEEP:
            await self.log.trim(HEALTH_THREAD, stored.seq - _CANARY_KEEP // 2)

    async def _health_loop(self) -> None:
        """Probe every ``health_interval_s``; while a fault is open, on the backoff schedule."""
        while True:
            if any(s != "append" for s in self._faults):
                delay = self._backoff()
            else:
                delay = self.settings.health_interval_s
            try:
                async with asyncio.timeout(delay):
                    await self._health_wake.wait()
            except TimeoutError:
                pass  # the interval elapsed: probe
            else:
                self._health_wake.clear()
                if not self._probe_requested:
                    continue  # a fault opened: recompute the delay
            self._probe_requested = False
            await self.check_health()

    def request_health_check(self) -> None:
        """Run a probe soon, without waiting for it."""
        self._probe_requested = True
        self._health_wake.set()

    def _backoff(self) -> float:
        """Exponential backoff with jitter, capped at ``recovery_max_s``."""
        s = self.settings
        ceiling: float = min(
            s.recovery_max_s, s.recovery_base_s * 2.0 ** max(0, self._failures - 1)
        )
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _fault(self, source: str, detail: str) -> None:
        self._faults[source] = detail
        self._failures += 1
        self._health_wake.set()  # the health loop moves to the backoff schedule
        state = self.state
        if state is BridgeState.ACTIVE:
            self._lifecycle.transition(BridgeState.DEGRADED, detail)
            state = BridgeState.DEGRADED
        if state is BridgeState.DEGRADED and self._failures >= self.settings.recovery_attempts:
            self._lifecycle.transition(BridgeState.FAILED, f"recovery exhausted: {detail}")

    def _clear_fault(self, source: str) -> None:
        self._faults.pop(source, None)
        if self._faults:
            return
        self._failures = 0
        if self.state in (BridgeState.DEGRADED, BridgeState.FAILED):
            self.metrics.recoveries.inc()
            self._lifecycle.transition(BridgeState.ACTIVE, "recovered")

    # Watched tasks ---------------------------------------------------------------

    def watch(self, task: asyncio.Task[Any], name: str) -> None:
        """Make a task's death visible: an exception opens a fault (DEGRADED), loudly.

        A task that returns or is cancelled is not a fault. The runner
        watches every run task and every task that ends a queued run.
        """
        task.add_done_callback(lambda t: self._task_died(name, t))

    def _start_task(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await factory()

        self._factories[name] = factory
        task = asyncio.create_task(run(), name=f"agentcast-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._task_died(name, t, restart=True))

    def _task_died(self, name: str, task: asyncio.Task[Any], restart: bool = False) -> None:
        if task.cancelled() or self._closing or self.state is BridgeState.CLOSED:
            return
        exc = task.exception()
        if exc is None and not restart:
            return  # a watched task that simply finished
        logger.error("background task %s died: %r", name, exc, exc_info=exc)
        self.metrics.task_failures.labels(task=name).inc()
        self._fault(f"task:{name}", f"background task {name} died: {exc!r}")
        if restart and name in self._factories:
            factory = self._factories[name]
            asyncio.get_running_loop().call_later(
                self._backoff(), lambda: self._restart(name, factory)
            )
        self.request_health_check()

    def _restart(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if not self._closing and self.state is not BridgeState.CLOSED:
            self._start_task(name, factory)

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("background task failed while stopping")

    # Reading -----------------------------------------------------------------------

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> Follower:
        """Follow a thread's stream from a position (see ``log.base.resolve_start``)."""
        return await self.log.follow(thread_id, after_seq, epoch)

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Read retained events of a thread after ``after_seq``."""
        return await self.log.read(thread_id, after_seq, limit)

    async def info(self, thread_id: str) -> StreamInfo:
        """The stream's epoch and retained range."""
        return await self.log.info(thread_id)

    def observe_delivery(self, events: Sequence[StoredEvent]) -> None:
        """Record emit→delivery latency for events just handed to a reader."""
        now = time.time()
        self.metrics.delivery_latency.observe_many([max(0.0, now - ev.ts) for ev in events])

    # Shutdown ----------------------------------------------------------------------

    async def close(self, drain_timeout: float | None = None) -> None:
        """Append what is buffered, stop background tasks, close the log; CLOSED.

        Events still buffered when ``drain_timeout`` expires (the log is down)
        fail their ``emit()`` with :class:`Unavailable` — loudly, never
        silently. An append already in flight is waited for (it has its own
        deadline, ``append_timeout_s``): if it commits, its callers get their
        events, never a false failure.
        """
        if self.state is BridgeState.CLOSED:
            return
        self._closing = True
        timeout = self.settings.shutdown_grace_s if drain_timeout is None else drain_timeout
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()  # every event appended (or failed loudly)
        await self._stop_tasks()
        if self._attempt is not None:
            take, attempt = self._attempt
            self._attempt = None
            await asyncio.wait({attempt})
            if not attempt.cancelled() and attempt.exception() is None:
                self._settle(take, attempt.result())
        leftovers = list(self._inflight)
        if self._queue is not None:
            while not self._queue.empty():
                leftovers.append(self._queue.get_nowait())
        for p in leftovers:
            if not p.future.done():
                p.future.set_exception(
                    Unavailable("the bridge closed before this event was appended")
                )
        self._inflight = []
        if self.state is not BridgeState.UNINITIALIZED:
            await _close_logged(self.log)
        self._lifecycle.transition(BridgeState.CLOSED, "closed")

    def _on_state(self, old: BridgeState, new: BridgeState, reason: str) -> None:
        self.metrics.set_state(new)
        log = logger.warning if new in (BridgeState.DEGRADED, BridgeState.FAILED) else logger.info
        log("bridge %s -> %s (%s)", old, new, reason)


def _transient(exc: BaseException) -> bool:
    """An outage worth retrying, as opposed to a refusal of the event itself."""
    return isinstance(exc, LogUnavailable | OSError | TimeoutError)


def _retried(batch: list[_Pending]) -> list[_Pending]:
    """The batch for its next attempt: the last one may have committed, so no draft is fresh."""
    for pending in batch:
        if pending.draft.fresh:
            pending.draft = msgspec.structs.replace(pending.draft, fresh=False)
    return batch


async def _close_logged(log: EventLog) -> None:
    """Close the log; a failure is logged (never hidden) and does not stop shutdown."""
    try:
        await log.close()
    except Exception:
        logger.exception("closing the event log failed")


#: The name of the component this bridge replaces, for code that looks it up by that name.
AgentWebSocketBridge = Bridge
