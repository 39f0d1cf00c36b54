"""The runner: executes runs with limits, timeouts, cancellation and recovery.

A top-level run lives in its own task. A sub-run (``ctx.delegate``) runs in
the task that called ``delegate`` — its parent's, or one the agent made with
``gather`` or ``create_task``. Either way it is a child of its parent in the
run tree (:mod:`agentcast.runner.state`), so cancelling or timing out the
parent reaches the sub-run first, and a parent winds up only after every
child has written its terminal event.

Every path out of a run — return, exception, timeout, cancellation, shutdown
— emits exactly one terminal event; a process that dies leaves its runs
``running`` and :mod:`agentcast.runner.recovery` ends them on the next start.
The steps that must not be cut in half by a cancellation — ``agent_started``,
winding up, the terminal event, creating a sub-run's row — run to their end
(:func:`~agentcast.runner.state.finish_anyway`); the cancellation is acted on
after them.

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

import msgspec

from ..agents import (
    AgentRegistry,
    AgentSettings,
    RunContext,
    SubRunCancelled,
    SubRunFailed,
    result_text,
)
from ..agents.sanitize import sanitize_error
from ..bridge import Bridge
from ..config import EngineSettings
from ..errors import InvalidInput, InvalidTransition, NotFound, RunActive, Unavailable
from ..events import TERMINAL_TYPES, EventType, bounded_json
from ..log.base import StoredEvent
from ..store.base import NewRun, RunRecord, RunStatus, Store
from ..types import new_run_id
from .scheduler import Scheduler, Slot
from .state import CancelResult, Outcome, RunState, RunTicket, UserLocks, finish_anyway

__all__ = ["CancelResult", "OnActive", "RunState", "RunTicket", "Runner"]

logger = logging.getLogger(__name__)

OnActive = Literal["reject", "enqueue", "interrupt"]
ON_ACTIVE: Final = ("reject", "enqueue", "interrupt")
MAX_MESSAGE_CHARS: Final = 100_000

# Cancellation reasons (the ``reason`` of ``agent_cancelled``).
CANCELLED_BY_USER: Final = "cancelled by user"
CANCELLED: Final = "cancelled"
INTERRUPTED: Final = "interrupted by a new message"
SHUTTING_DOWN: Final = "server shutting down"
TIMED_OUT: Final = "timeout"
PARENT_ENDED: Final = "parent run ended"
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
        self.agent_settings = AgentSettings(
            text_coalesce_ms=s.text_coalesce_ms,
            tool_timeout_s=s.tool_timeout_s,
            tool_concurrency=s.tool_concurrency,
            max_value_bytes=s.max_value_bytes,
        )
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
            outcome = await self._execute(state)
            self.bridge.metrics.runs_finished.labels(status=outcome.status.value).inc()
        except Exception:
            # _execute writes the terminal event on every path it can; only a
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
            self._request_cancel(state, CANCELLED_BY_USER, alone=state.is_sub)
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
            self._request_cancel(state, reason)
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
                self._request_cancel(slot.item, reason)

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

    def _request_cancel(self, state: RunState, reason: str, *, alone: bool = False) -> bool:
        """Mark ``state`` and its subtree cancelled and cancel their tasks, once each.

        The reason is recorded before any task is cancelled: the run acts on
        it whenever the cancellation reaches it, even inside a step that
        finishes first. Returns whether the cancel takes effect (the run had
        not been cancelled or begun ending already).
        """
        if state.ending or state.cancel_reason is not None:
            return False
        tasks: list[asyncio.Task[Any]] = []

        def mark(run: RunState, why: str) -> None:
            if run.ending or run.cancel_reason is not None:
                return
            run.cancel_reason = why
            task = run.task
            # A task cancelled before its first step would never run its
            # coroutine (and so never write a terminal event): until the run
            # has begun, the reason alone is enough — it is checked there.
            if run.started and task is not None and not task.done() and task not in tasks:
                tasks.append(task)
            for child in list(run.children):
                mark(child, f"{PARENT_ENDED}: {reason}")

        mark(state, reason)
        state.cancelled_alone = alone
        for task in tasks:
            task.cancel()
        return True

    def _time_out(self, state: RunState) -> None:
        if state.task is not None and not state.task.done():
            self._request_cancel(state, TIMED_OUT)

    # Executing ------------------------------------------------------------------------

    async def _emit(self, record: RunRecord, event_type: str, data: dict[str, Any]) -> StoredEvent:
        return await self.bridge.emit(
            thread_id=record.thread_id,
            run_id=record.run_id,
            parent_run_id=record.parent_run_id,
            agent=record.agent,
            event_type=event_type,
            data=data,
        )

    def _context(self, state: RunState) -> RunContext:
        rec = state.record

        async def emit(event_type: str, data: Any) -> StoredEvent:
            if state.ending:  # nothing follows a terminal event
                raise InvalidTransition(f"run {rec.run_id} has ended")
            return await self._emit(rec, event_type, data)

        return RunContext(
            run_id=rec.run_id,
            thread_id=rec.thread_id,
            user_id=rec.user_id,
            agent=rec.agent,
            message=rec.input,
            parent_run_id=rec.parent_run_id,
            emit=emit,
            delegate=self._delegate,
            registry=self.registry,
            settings=self.agent_settings,
        )

    async def _execute(self, state: RunState) -> Outcome:
        """Run one (sub-)run from ``agent_started`` to exactly one terminal event.

        A sub-run cancelled with its parent (or by the task that awaits it)
        re-raises ``CancelledError`` after its ``agent_cancelled`` so that the
        parent unwinds and ends after it; a sub-run cancelled alone returns
        its outcome and its parent goes on.
        """
        rec = state.record
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        state.task = task
        state.started = loop.time()
        timer = None
        if not state.is_sub:
            timer = loop.call_later(self.settings.run_timeout_s, self._time_out, state)

        def elapsed_ms() -> float:
            return round((loop.time() - state.started) * 1000, 3)

        ctx = self._context(state)
        try:
            try:
                await finish_anyway(
                    self._emit(rec, EventType.AGENT_STARTED, {"message": rec.input})
                )
                if state.cancel_reason is not None:
                    raise asyncio.CancelledError  # cancelled before the agent began
                result = await self.registry.get(rec.agent).run(ctx)
                final, structured = result_text(result, ctx)
                data: dict[str, Any] = {"status": "success", "final_response": final}
                if structured is not msgspec.UNSET:
                    data["result"] = bounded_json(structured, self.settings.max_value_bytes)
                outcome = Outcome(RunStatus.COMPLETED, EventType.AGENT_COMPLETED, data, final)
            except asyncio.CancelledError:
                if state.cancel_reason is None:
                    # Cancelled by agent code (a TaskGroup, task.cancel) or the loop closing.
                    state.cancel_reason = CANCELLED
                elif state.cancelled_alone and not state.ancestor_cancelled() and task:
                    task.uncancel()  # this sub-run's own cancel: the parent goes on
                outcome = self._cancelled(state)
            except Exception as exc:
                outcome = _failed(type(exc).__name__, sanitize_error(exc))
            await finish_anyway(self._wind_up(state, ctx))
            if outcome.status is RunStatus.COMPLETED and state.cancel_reason is not None:
                outcome = self._cancelled(state)  # cancelled while winding up, or swallowed it
            outcome = await self._write_terminal(state, outcome, elapsed_ms)
        finally:
            if timer is not None:
                timer.cancel()
        if state.is_sub and (
            state.ancestor_cancelled()
            or (outcome.status is RunStatus.CANCELLED and not state.cancelled_alone)
        ):
            raise asyncio.CancelledError
        return outcome

    def _cancelled(self, state: RunState) -> Outcome:
        reason = state.cancel_reason or CANCELLED
        if not state.is_sub and reason == TIMED_OUT:
            message = f"the run exceeded its {self.settings.run_timeout_s:g} s limit"
            return _failed("timeout", message)
        return Outcome(
            RunStatus.CANCELLED, EventType.AGENT_CANCELLED, {"reason": reason}, "", reason
        )

    async def _wind_up(self, state: RunState, ctx: RunContext) -> None:
        """End what the agent left running, so that the terminal event comes last.

        Sub-runs still running in tasks of their own are cancelled and waited
        for (a parent ends after its children); tool calls left running are
        cancelled (their ``tool_completed`` comes first) and pending text is
        sent. A failure here is logged and never costs the run its terminal
        event.
        """
        state.closing = True
        while state.creating:  # sub-runs whose rows are being written join first
            await asyncio.wait(set(state.creating))
        children = [child for child in state.children if not child.done.is_set()]
        for child in children:
            self._request_cancel(child, f"{PARENT_ENDED}: {state.cancel_reason or 'it returned'}")
        for child in children:
            await child.done.wait()
        try:
            await ctx.aclose()
        except Exception:
            logger.exception("winding up run %s failed", state.run_id)

    async def _write_terminal(self, state: RunState, outcome: Outcome, elapsed_ms: Any) -> Outcome:
        """Write the run's one terminal event; if the log refuses it, an ``agent_error``.

        A refusal is permanent for that event (a projector bug, an integrity
        error): the run then ends with ``agent_error`` naming it, rather than
        with no terminal event at all.
        """
        state.ending = True
        data = {**outcome.data, "duration_ms": elapsed_ms()}
        try:
            await finish_anyway(self._emit(state.record, outcome.event_type, data))
            return outcome
        except Exception as exc:
            if outcome.event_type == EventType.AGENT_ERROR:
                raise
            logger.exception("the terminal event of run %s was refused", state.run_id)
            failed = _failed(type(exc).__name__, sanitize_error(exc))
            data = {**failed.data, "duration_ms": elapsed_ms()}
            await finish_anyway(self._emit(state.record, failed.event_type, data))
            return failed
        finally:
            state.done.set()

    async def _delegate(self, parent_ctx: RunContext, agent: str, message: str) -> str:
        """Run a sub-run in the calling task and return its final response.

        Raises:
            SubRunFailed: the sub-run ended with ``agent_error``.
            SubRunCancelled: the sub-run was cancelled by its own id.
            NotFound: no agent of that name.
            Unavailable: the parent run is winding up or over.
        """
        parent = self._states.get(parent_ctx.run_id)
        if parent is None or parent.closing:
            raise Unavailable("the parent run has ended")
        if agent not in self.registry:
            raise NotFound(f"unknown agent {agent!r}")
        prec = parent.record
        creating = asyncio.ensure_future(
            self.store.create_run(
                NewRun(new_run_id(), prec.thread_id, prec.user_id, agent, message,
                       parent_run_id=prec.run_id)
            )
        )  # fmt: skip
        made: list[RunState] = []

        def register(done: asyncio.Future[tuple[RunRecord, bool]]) -> None:
            # A done-callback, so the sub-run joins the tree the moment its row
            # exists, before a parent winding up can look for its children. This
            # task may resume before the callback runs (a cancel woke it first):
            # then it registers the sub-run itself, and the callback does nothing.
            parent.creating.discard(done)
            if made or done.cancelled() or done.exception() is not None:
                return
            sub = RunState(done.result()[0], parent=parent)
            if parent.cancel_reason is not None or parent.closing:
                sub.cancel_reason = f"{PARENT_ENDED}: {parent.cancel_reason or 'it returned'}"
            parent.children.add(sub)
            self._states[sub.run_id] = sub
            made.append(sub)

        parent.creating.add(creating)
        creating.add_done_callback(register)
        # The row is written whatever happens to this task meanwhile: a sub-run
        # that exists is always run to a terminal event, never left queued.
        interrupted = False
        while True:
            try:
                await asyncio.shield(creating)
                break
            except asyncio.CancelledError:
                if creating.cancelled():
                    raise
                interrupted = True
        register(creating)
        sub, record = made[0], made[0].record
        if interrupted and sub.cancel_reason is None:
            sub.cancel_reason = f"{PARENT_ENDED}: {parent.cancel_reason or CANCELLED}"
        try:
            outcome = await self._execute(sub)
        finally:
            parent.children.discard(sub)
            self._states.pop(record.run_id, None)
        if interrupted or parent.cancel_reason is not None:
            raise asyncio.CancelledError  # the parent's own cancellation, held until now
        if outcome.status is RunStatus.CANCELLED:
            raise SubRunCancelled(
                f"sub-agent {agent!r} was cancelled: {outcome.error}",
                agent=agent, run_id=record.run_id, reason=outcome.error,
            )  # fmt: skip
        if outcome.status is not RunStatus.COMPLETED:
            raise SubRunFailed(
                f"sub-agent {agent!r} failed: {outcome.error}",
                agent=agent, run_id=record.run_id, error_type=outcome.data.get("error_type"),
            )  # fmt: skip
        return outcome.final_response


def _failed(error_type: str, message: str) -> Outcome:
    return Outcome(
        RunStatus.FAILED,
        EventType.AGENT_ERROR,
        {"error_type": error_type, "message": message},
        error=message,
    )
