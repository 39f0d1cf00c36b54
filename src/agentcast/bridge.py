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
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .appender import Appender
from .config import EngineSettings
from .errors import EventTooLarge, InvalidEvent, LogUnavailable, Unavailable
from .event_size import check_event_size
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
#: Above this share of PostgreSQL's notification queue in use, ``/readyz`` and the log warn.
NOTIFY_QUEUE_WARN: Final = 0.5


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one probe."""

    ok: bool
    state: BridgeState
    latency_ms: float | None
    detail: str
    checked_at: float
    #: PostgreSQL only: ``pg_notification_queue_usage()`` (0 to 1) at the probe.
    notification_queue_usage: float | None = None


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
        self._appender: Appender | None = None
        self._init_task: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._factories: dict[str, Callable[[], Awaitable[None]]] = {}
        self._faults: dict[str, str] = {}
        self._failures = 0
        self._health_wake = asyncio.Event()
        self._probe_requested = False
        self._closing = False
        self.last_report: HealthReport | None = None

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
                self._appender = Appender(
                    self._append, self.settings, self.metrics,
                    on_failure=self._append_failed, on_success=self._append_succeeded,
                    internal_thread=HEALTH_THREAD,
                )  # fmt: skip
                self._start_task("appender", self._appender.run)
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
        lets a caller retry an emit safely (the log stores it once). The size
        bound is checked on the envelope as it will be stored and sent (seq at
        its widest), around the payload bytes encoded once here (``event_size``).

        Raises:
            EventTooLarge: over ``max_event_bytes``; nothing is appended, and the
                bridge fails nothing else (the caller decides what it means).
            InvalidEvent: the payload breaks the contract; nothing is appended.
            Unavailable: the bridge is not started or is closed.
        """
        try:
            payload = encode_payload(event_type, data)
            eid, ts = event_id or new_event_id(), time.time()
            check_event_size(
                payload, self.settings.max_event_bytes, event_type=event_type, event_id=eid,
                thread_id=thread_id, run_id=run_id, parent_run_id=parent_run_id, agent=agent,
                ts=ts,
            )  # fmt: skip
        except EventTooLarge:
            self.metrics.events_refused.labels("too_large").inc()
            raise
        except InvalidEvent:
            self.metrics.events_refused.labels("invalid").inc()
            raise
        draft = EventDraft(
            eid, thread_id, run_id, parent_run_id, event_type, ts, agent, payload,
            fresh=event_id is None,  # ours, never submitted before
        )  # fmt: skip
        return await self._submit(draft)

    async def _submit(self, draft: EventDraft) -> StoredEvent:
        appender = self._appender
        if appender is None or self.state in (BridgeState.CLOSED, BridgeState.UNINITIALIZED):
            raise Unavailable("the bridge is not running")
        return await appender.submit(draft)

    async def _append(self, drafts: list[EventDraft]) -> list[StoredEvent]:
        return await self.log.append(drafts)

    @property
    def buffered(self) -> int:
        """Events accepted by ``emit()`` and not yet appended (queued or in flight)."""
        return 0 if self._appender is None else self._appender.waiting

    async def _append_failed(self, exc: BaseException) -> None:
        """The appender's outage: DEGRADED, then wait the backoff before its retry."""
        self.metrics.append_failures.inc()
        logger.warning("append failed (%s); retrying", exc)
        self._fault("append", f"append failed: {exc}")
        await asyncio.sleep(self._backoff())

    def _append_succeeded(self) -> None:
        if "append" in self._faults:
            self._clear_fault("append")

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
            report = HealthReport(
                True, self.state, latency, "ok", time.time(), await self._queue_usage()
            )
        self.last_report = report
        return report

    async def _queue_usage(self) -> float | None:
        """The shared database's notification queue use, for logs that notify through one.

        Every append of a PostgreSQL log notifies; once the queue is full (a
        listener somewhere stopped reading) every append fails, so its use is
        watched before that happens. ``None`` for other logs or when it cannot be read.
        """
        usage_of = getattr(self.log, "notification_queue_usage", None)
        if usage_of is None:
            return None
        try:
            usage = float(await usage_of())
        except Exception as exc:  # the probe itself passed: report, do not fault
            logger.warning("cannot read the notification queue usage: %r", exc)
            return None
        self.metrics.notification_queue_usage.set(usage)
        if usage > NOTIFY_QUEUE_WARN:
            logger.warning("PostgreSQL's notification queue is %.0f %% full", usage * 100)
        return usage

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
        if self._appender is not None:
            await self._appender.drain(timeout)  # every event appended (or failed loudly)
        await self._stop_tasks()
        if self._appender is not None:
            await self._appender.close()
        if self.state is not BridgeState.UNINITIALIZED:
            await _close_logged(self.log)
        self._lifecycle.transition(BridgeState.CLOSED, "closed")

    def _on_state(self, old: BridgeState, new: BridgeState, reason: str) -> None:
        self.metrics.set_state(new)
        log = logger.warning if new in (BridgeState.DEGRADED, BridgeState.FAILED) else logger.info
        log("bridge %s -> %s (%s)", old, new, reason)


async def _close_logged(log: EventLog) -> None:
    """Close the log; a failure is logged (never hidden) and does not stop shutdown."""
    try:
        await log.close()
    except Exception:
        logger.exception("closing the event log failed")


#: The name of the component this bridge replaces, for code that looks it up by that name.
AgentWebSocketBridge = Bridge
