"""The runner: which runs may start and when; cancellation; shutdown; recovery.

It admits runs under the per-thread, per-user and global limits
(:mod:`agentcast.runner.scheduler`), starts each top-level run in its own task,
cancels runs and sub-runs, ends queued runs, and shuts down in bounded time.
Executing a run — from ``agent_started`` to exactly one terminal event, with
its sub-runs — is :mod:`agentcast.runner.execution`'s part. A process that
dies leaves its runs ``running``, and :mod:`agentcast.runner.recovery` ends
them on the next start.

**A thread takes its next run at once.** A run's thread slot and its user's
running slot are freed by a commit listener of the event log when the run's
terminal event is committed, before any follower can see that event. A client
that reacts to the terminal event by starting the next run is never refused
with ``run_active`` or ``limit_exceeded`` because of the run that just ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Final, Literal

from ..agents import AgentRegistry, AgentSettings
from ..bridge import Bridge
from ..config import EngineSettings
from ..errors import InvalidInput, LimitExceeded, NotFound, RunActive, Unavailable
from ..event_size import check_start_message
from ..events import TERMINAL_TYPES, EventType
from ..log.base import StoredEvent
from ..store.base import NewRun, RunRecord, RunStatus, Store
from ..types import new_run_id
from .execution import Executor
from .scheduler import Scheduler, Slot
from .state import (
    CANCELLED_BY_USER,
    INTERRUPTED,
    SHUTTING_DOWN,
    CancelResult,
    RunState,
    RunTicket,
    UserLocks,
    request_cancel,
)

__all__ = ["CancelResult", "OnActive", "RunState", "RunTicket", "Runner"]

logger = logging.getLogger(__name__)

OnActive = Literal["reject", "enqueue", "interrupt"]
ON_ACTIVE: Final = ("reject", "enqueue", "interrupt")
MAX_MESSAGE_CHARS: Final = 100_000

#: The least time shutdown gives cancelled runs to write their terminal events.
MIN_CANCEL_WAIT_S: Final = 5.0


class Runner:
    """Starts, schedules, cancels and supervises runs."""

    def __init__(
        self,
        bridge: Bridge,
        store: Store,
        registry: AgentRegistry,
        settings: EngineSettings | None = None,
    ) -> None:
        self.bridge = bridge
        self.store = store
        self.registry = registry
        self.settings = settings or bridge.settings
        s = self.settings
        # Every field of the agent settings, history bounds included.
        self.agent_settings = AgentSettings.of(s)
        self._scheduler: Scheduler[RunState] = Scheduler(
            s.max_runs_per_user, s.max_queued_per_user, s.max_queued_per_thread,
            s.max_concurrent_runs,
        )  # fmt: skip
        #: Top-level runs holding a place in the scheduler, by run id.
        self._slots: dict[str, Slot[RunState]] = {}
        #: Every live run and sub-run, by run id.
        self._states: dict[str, RunState] = {}
        self._locks = UserLocks()
        #: Run tasks and the tasks ending queued runs: shutdown waits for them.
        self._tasks: set[asyncio.Task[None]] = set()
        #: Cancelled queued runs whose endings are still to be written, and
        #: cancels deferred behind them; written in order by one task.
        self._endings: deque[RunState | tuple[Slot[RunState], str]] = deque()
        self._ending_task: asyncio.Task[None] | None = None
        self.executor = Executor(
            bridge, store, registry, self.settings, self.agent_settings, self._states
        )
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()
        bridge.log.add_commit_listener(self._on_commit)

    # Lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous process left, then accept runs."""
        from .recovery import recover

        await recover(self)
        self._accepting = True
        self._pump()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting; let running runs finish within ``grace_s``; cancel the rest.

        Every cancelled run gets its terminal event. Queued runs are ended at
        once (``agent_started`` then ``agent_cancelled``) rather than waiting
        out the grace period, so no client waits for a run that will not
        come. Each phase has a deadline: whatever hangs (a log outage, an
        agent that ignores its cancellation), shutdown returns within
        ``grace_s + max(grace_s, MIN_CANCEL_WAIT_S)``, logging what it left.
        """
        self._accepting = False
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        for slot in self._scheduler.queued_slots():
            self._cancel_slot(slot, SHUTTING_DOWN)
        if not await self._settle(grace, runs_only=True):
            for slot in self._scheduler.all_slots():
                self._cancel_slot(slot, SHUTTING_DOWN)
        if not await self._settle(max(grace, MIN_CANCEL_WAIT_S)):
            left = sorted(t.get_name() for t in self._tasks)
            logger.error("shutdown left %d run tasks unfinished: %s", len(left), left)

    async def _settle(self, timeout: float, *, runs_only: bool = False) -> bool:
        """Wait (at most ``timeout``) until no run is active and, unless ``runs_only``, no task."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
                while self._tasks and not runs_only:
                    await asyncio.wait(set(self._tasks))
        except TimeoutError:
            return False
        return True

    @property
    def running_count(self) -> int:
        """Top-level runs running now."""
        return self._scheduler.running_count

    @property
    def queued_count(self) -> int:
        """Top-level runs waiting to start."""
        return self._scheduler.queued_count

    async def wait_idle(self) -> None:
        """Wait until no run is running or queued and every run task is over."""
        await self._idle.wait()
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # Starting -------------------------------------------------------------------------

    async def start_run(
        self,
        user_id: str,
        agent: str,
        message: str,
        thread_id: str | None = None,
        on_active: OnActive = "reject",
        idempotency_key: str | None = None,
    ) -> RunTicket:
        """Accept a run and schedule it; return where its events will appear.

        Raises:
            Unavailable: shutting down, or the bridge is FAILED.
            NotFound: unknown agent, or a thread the user does not own.
            RunActive: the thread has an active run and ``on_active`` is reject.
            LimitExceeded: the user's or thread's queue is full (checked
                before an ``interrupt`` cancels anything).
            InvalidInput: bad arguments.
        """
        if on_active not in ON_ACTIVE:
            raise InvalidInput(f"on_active must be one of {', '.join(ON_ACTIVE)}")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            raise InvalidInput(
                f"message must be a string of at most {MAX_MESSAGE_CHARS} characters"
            )
        check_start_message(message, self.settings.max_event_bytes)
        self._check_accepting()
        if agent not in self.registry:
            raise NotFound(f"unknown agent {agent!r}")
        async with self._locks.hold(user_id):
            self._check_accepting()
            if idempotency_key is not None:
                existing = await self.store.find_run_by_key(user_id, idempotency_key)
                if existing is not None:
                    info = await self.bridge.info(existing.thread_id)
                    return RunTicket(
                        existing.run_id, existing.thread_id, info.epoch,
                        (existing.first_seq or 1) - 1 if existing.first_seq else info.last_seq,
                        created=False,
                    )  # fmt: skip
            if thread_id is None:
                thread = await self.store.create_thread(user_id, title=message[:80])
                thread_id = thread.thread_id
            else:
                await self.store.check_thread(user_id, thread_id)
            try:
                replaced = self._admission(user_id, thread_id, on_active)
            except (RunActive, LimitExceeded):
                # A caller that read a run's end from the store (a status poll) may
                # be a moment ahead of the commit listener that frees its slots:
                # let every visible commit's listeners run, then decide for good.
                await self.bridge.log.settle()
                replaced = self._admission(user_id, thread_id, on_active)
            info = await self.bridge.info(thread_id)
            record, created = await self.store.create_run(
                NewRun(new_run_id(), thread_id, user_id, agent, message,
                       idempotency_key=idempotency_key)
            )  # fmt: skip
            # Queued ones first (they leave the line right here), then the running one.
            for slot in replaced:
                self._cancel_slot(slot, INTERRUPTED, after_endings=True)
            self._admit(record)
            self._pump()
        return RunTicket(record.run_id, thread_id, info.epoch, info.last_seq, created)

    def _admission(self, user_id: str, thread_id: str, on_active: OnActive) -> list[Slot[RunState]]:
        """Check that a new run may be admitted; return the runs it replaces.

        Limits are checked before anything is cancelled: an ``interrupt``
        that would be refused leaves the thread's runs alone.
        """
        active = self._scheduler.active_in_thread(thread_id)
        if active and on_active == "reject":
            raise RunActive("the thread already has an active run")
        running = self._scheduler.running_in_thread(thread_id)
        if on_active == "interrupt":
            queued = [s for s in active if s is not running]
            self._scheduler.check_admission(
                user_id, thread_id, thread_busy=running is not None, replacing=len(queued)
            )
            return queued + ([running] if running is not None else [])
        self._scheduler.check_admission(user_id, thread_id, thread_busy=bool(active))
        return []

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise Unavailable("the server is not accepting runs")
        if not self.bridge.accepting_runs:
            raise Unavailable(f"the event log is unavailable ({self.bridge.state})")

    def _admit(self, record: RunRecord) -> None:
        state = RunState(record)
        slot = Slot(record.run_id, record.thread_id, record.user_id, state, record.queue_pos)
        self._states[record.run_id] = state
        self._slots[record.run_id] = slot
        self._scheduler.enqueue(slot)
        self._idle.clear()

    def _pump(self) -> None:
        if not self._accepting:
            return
        for slot in self._scheduler.take_startable():
            slot.item.task = self._spawn(self._run_top(slot), f"run-{slot.run_id}")
        self._update_gauges()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A watched task that shutdown waits for."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.bridge.watch(task, name)
        return task

    def _update_gauges(self) -> None:
        self.bridge.metrics.active_runs.set(self._scheduler.running_count)
        self.bridge.metrics.queued_runs.set(self._scheduler.queued_count)
        if not self._scheduler.all_slots():
            self._idle.set()

    def _on_commit(self, events: Sequence[StoredEvent]) -> None:
        """Free a run's thread and user slots as its terminal event commits.

        A commit listener of the log: it runs on the loop after the commit
        and before any follower can see the event, so whoever reacts to the
        terminal event finds the thread free.
        """
        freed = False
        for event in events:
            if event.type not in TERMINAL_TYPES:
                continue
            state = self._states.get(event.run_id)
            if state is not None:
                state.terminal_committed = True
            if event.parent_run_id is None:
                slot = self._slots.pop(event.run_id, None)
                if slot is not None:
                    self._scheduler.finished(slot)
                    freed = True
        if freed:
            self._pump()
            self._update_gauges()

    async def _run_top(self, slot: Slot[RunState]) -> None:
        state = slot.item
        try:
            outcome = await self.executor.execute(state)
            self.bridge.metrics.runs_finished.labels(status=outcome.status.value).inc()
        except Exception:
            # The executor writes the terminal event on every path it can; only a
            # log that refuses it (closed at shutdown) lands here, and then
            # recovery ends the run at the next start.
            logger.exception("run %s ended without its terminal event", state.run_id)
        finally:
            # Normally done already by _on_commit; not if the terminal event failed.
            if self._slots.pop(slot.run_id, None) is not None:
                self._scheduler.finished(slot)
            self._states.pop(slot.run_id, None)
            state.done.set()
            self._pump()
            self._update_gauges()

    # Cancelling -----------------------------------------------------------------------

    async def cancel(
        self, user_id: str, run_id: str | None = None, thread_id: str | None = None
    ) -> CancelResult:
        """Cancel a run or sub-run by id, or the active run of a thread.

        A sub-run cancelled by its own id ends alone (``agent_cancelled``);
        its parent's ``delegate`` raises :class:`SubRunCancelled`. A run that
        had already ended keeps its final status and gets no second terminal
        event. Another user's run or thread answers :class:`NotFound`. See
        :class:`CancelResult` for what the result promises.
        """
        if run_id is None and thread_id is None:
            raise InvalidInput("cancel needs a run_id or a thread_id")
        if run_id is not None:
            record = await self.store.get_run(user_id, run_id)
        else:
            assert thread_id is not None
            await self.store.check_thread(user_id, thread_id)
            active = self._scheduler.active_in_thread(thread_id)
            if not active:
                raise NotFound("the thread has no active run")
            record = active[0].item.record
        info = await self.bridge.info(record.thread_id)
        # The decision: nothing is awaited from here to the return while the
        # run's terminal event is still to come.
        state = self._states.get(record.run_id)
        if state is None or state.terminal_committed:
            current = await self.store.find_run(record.run_id)  # it has ended: say how
            status = (current or record).status
        elif (slot := self._slots.get(record.run_id)) is not None:
            status = self._cancel_slot(slot, CANCELLED_BY_USER)
        else:
            # A sub-run (cancelled alone), or a run whose terminal event is
            # being written: either way that event is still to come.
            request_cancel(state, CANCELLED_BY_USER, alone=state.is_sub)
            status = RunStatus.RUNNING
        return CancelResult(record.run_id, record.thread_id, status, info.epoch, info.last_seq)

    def _cancel_slot(
        self, slot: Slot[RunState], reason: str, *, after_endings: bool = False
    ) -> RunStatus:
        """Cancel a running or queued top-level run, without waiting for anything.

        A queued run leaves the line at once; its ``agent_started`` and
        ``agent_cancelled`` are written by the runner's endings task, in the
        order the runs were cancelled, so a cancel never waits on the log (nor
        makes anyone else wait while it is down). ``after_endings`` defers a
        running run's cancel until the endings queued before it are written:
        an ``interrupt`` then reads in one order — the queued runs it
        replaced, then the running one.
        """
        state = slot.item
        if self._scheduler.remove_queued(slot):
            state.cancel_reason = reason
            self._slots.pop(slot.run_id, None)
            self._states.pop(slot.run_id, None)
            self._endings.append(state)
            self._drain_endings()
            self._update_gauges()
            return RunStatus.QUEUED
        if after_endings and self._endings:
            self._endings.append((slot, reason))
        else:
            request_cancel(state, reason)
        return RunStatus.RUNNING

    def _drain_endings(self) -> None:
        if self._ending_task is None or self._ending_task.done():
            self._ending_task = self._spawn(self._write_endings(), "runner-endings")

    async def _write_endings(self) -> None:
        """Write the endings of cancelled queued runs (and deferred cancels), in order."""
        while self._endings:
            item = self._endings.popleft()
            if isinstance(item, RunState):
                try:
                    await self._end_queued(item)
                except Exception:
                    logger.exception("ending queued run %s failed", item.run_id)
            else:
                slot, reason = item
                request_cancel(slot.item, reason)

    async def _emit(self, record: RunRecord, event_type: str, data: dict[str, Any]) -> StoredEvent:
        return await self.executor.emit(record, event_type, data)

    async def _end_queued(self, state: RunState) -> None:
        """A run cancelled while queued: ``agent_started`` then ``agent_cancelled``."""
        rec = state.record
        try:
            await self._emit(rec, EventType.AGENT_STARTED, {"message": rec.input})
            await self._emit(
                rec, EventType.AGENT_CANCELLED, {"reason": state.cancel_reason, "duration_ms": 0.0}
            )
            self.bridge.metrics.runs_finished.labels(status="cancelled").inc()
        finally:
            state.done.set()
