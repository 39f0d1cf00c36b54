"""The runner: executes runs with limits, timeouts, cancellation and recovery.

A top-level run lives in its own task; a sub-run (``ctx.delegate``) runs inside
its parent's task, so cancelling or timing out the parent reaches the sub-run
first and the sub-run's terminal event always precedes the parent's
(DESIGN.md invariant 3). Every path out of a run — return, exception, timeout,
cancellation, shutdown — emits exactly one terminal event; a process that dies
leaves its runs ``running`` and :mod:`agentcast.runner.recovery` ends them on
the next start.

Per-run state lives in :class:`RunState` objects held by the runner instance,
never in module globals (DESIGN.md, "Isolation by construction").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from ..agents import AgentRegistry, AgentSettings, RunContext, SubRunFailed, result_text
from ..agents.sanitize import sanitize_error
from ..bridge import Bridge
from ..config import EngineSettings
from ..errors import InvalidInput, NotFound, RunActive, Unavailable
from ..events import EventType, bounded_json
from ..log.base import StoredEvent
from ..store.base import NewRun, RunRecord, RunStatus, Store
from ..types import new_run_id
from .scheduler import Scheduler, Slot

__all__ = ["OnActive", "RunState", "RunTicket", "Runner"]

logger = logging.getLogger(__name__)

OnActive = Literal["reject", "enqueue", "interrupt"]
ON_ACTIVE: Final = ("reject", "enqueue", "interrupt")
MAX_MESSAGE_CHARS: Final = 100_000

# Cancellation reasons (the ``reason`` of ``agent_cancelled``).
CANCELLED_BY_USER: Final = "cancelled by user"
INTERRUPTED: Final = "interrupted by a new message"
SHUTTING_DOWN: Final = "server shutting down"
TIMED_OUT: Final = "timeout"


@dataclass(frozen=True, slots=True)
class RunTicket:
    """What a start returns: where the run's events will appear.

    A client that follows ``thread_id`` from ``(epoch, after_seq)`` receives
    every event of the run (PROTOCOL.md ``run_accepted``).
    """

    run_id: str
    thread_id: str
    epoch: str
    after_seq: int
    created: bool = True


@dataclass(eq=False)
class RunState:
    """The live state of one run or sub-run."""

    record: RunRecord
    root: RunState | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    started: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: A cancellation arrived while this (sub-)run's terminal event was being
    #: written; it was held back until the event was durable (see _emit_terminal).
    held_cancel: bool = False

    @property
    def top(self) -> RunState:
        """The top-level run this (sub-)run belongs to."""
        return self.root or self


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: RunStatus
    final_response: str = ""
    error: str = ""


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
        self._slots: dict[str, Slot[RunState]] = {}
        self._states: dict[str, RunState] = {}
        self._admission = asyncio.Lock()
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()

    # Lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous process left, then accept runs."""
        from .recovery import recover

        await recover(self)
        self._accepting = True
        self._pump()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting; let running runs finish within ``grace_s``; cancel the rest.

        Every cancelled run gets its terminal event (DESIGN.md invariant 9).
        Queued runs are cancelled too (``agent_started`` then ``agent_cancelled``),
        so no client waits for a run that will not come.
        """
        self._accepting = False
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        async with self._admission:
            # Queued runs will not start any more: end them now rather than
            # waiting out the grace period for them.
            for slot in self._scheduler.queued_slots():
                await self._cancel_slot(slot, SHUTTING_DOWN)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        async with self._admission:
            for slot in list(self._scheduler.all_slots()):
                await self._cancel_slot(slot, SHUTTING_DOWN)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace, 5.0)):
                await self._idle.wait()

    @property
    def running_count(self) -> int:
        """Top-level runs running now."""
        return self._scheduler.running_count

    @property
    def queued_count(self) -> int:
        """Top-level runs waiting to start."""
        return self._scheduler.queued_count

    async def wait_idle(self) -> None:
        """Wait until no run is running or queued (tests, benchmarks)."""
        await self._idle.wait()

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
            LimitExceeded: the user's or thread's queue is full.
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
        async with self._admission:
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
            active = self._scheduler.active_in_thread(thread_id)
            if active and on_active == "reject":
                raise RunActive("the thread already has an active run")
            busy = bool(active) and on_active == "enqueue"
            self._scheduler.check_admission(user_id, thread_id, thread_busy=busy)
            info = await self.bridge.info(thread_id)
            record, created = await self.store.create_run(
                NewRun(new_run_id(), thread_id, user_id, agent, message,
                       idempotency_key=idempotency_key)
            )  # fmt: skip
            if on_active == "interrupt":
                # Queued ones first (they end right here), then the running one:
                # the thread's stream then reads in one deterministic order.
                running = self._scheduler.running_in_thread(thread_id)
                for slot in [s for s in active if s is not running] + [
                    s for s in active if s is running
                ]:
                    await self._cancel_slot(slot, INTERRUPTED)
            self._admit(record)
            self._pump()
        return RunTicket(record.run_id, thread_id, info.epoch, info.last_seq, created)

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
            state = slot.item
            state.task = asyncio.create_task(self._run_top(slot), name=f"run-{slot.run_id}")
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.bridge.metrics.active_runs.set(self._scheduler.running_count)
        self.bridge.metrics.queued_runs.set(self._scheduler.queued_count)
        if not self._scheduler.all_slots():
            self._idle.set()

    async def _run_top(self, slot: Slot[RunState]) -> None:
        state = slot.item
        try:
            outcome = await self._execute(state)
            self.bridge.metrics.runs_finished.labels(status=outcome.status.value).inc()
        except Exception:
            # _execute emits the terminal event on every path it can; only an
            # unavailable log at shutdown lands here, and recovery ends the run.
            logger.exception("run %s ended without its terminal event", state.record.run_id)
        finally:
            self._scheduler.finished(slot)
            self._slots.pop(slot.run_id, None)
            self._states.pop(slot.run_id, None)
            state.done.set()
            self._pump()
            self._update_gauges()

    # Cancelling -----------------------------------------------------------------------

    async def cancel(
        self, user_id: str, run_id: str | None = None, thread_id: str | None = None
    ) -> tuple[str, RunStatus]:
        """Cancel a run by id, or the active run of a thread; return its id and status.

        The status is the run's status when the cancel was accepted: a run that
        had already ended keeps its final status and gets no second terminal
        event. Another user's run or thread answers :class:`NotFound`.
        """
        if run_id is None and thread_id is None:
            raise InvalidInput("cancel needs a run_id or a thread_id")
        async with self._admission:
            if run_id is not None:
                record = await self.store.get_run(user_id, run_id)
            else:
                assert thread_id is not None
                await self.store.check_thread(user_id, thread_id)
                active = self._scheduler.active_in_thread(thread_id)
                if not active:
                    raise NotFound("the thread has no active run")
                record = active[0].item.record
            slot = self._slots.get(record.run_id)
            if slot is None:
                current = await self.store.find_run(record.run_id)
                return record.run_id, (current or record).status
            status = await self._cancel_slot(slot, CANCELLED_BY_USER)
            return record.run_id, status

    async def _cancel_slot(self, slot: Slot[RunState], reason: str) -> RunStatus:
        """Cancel a running or queued run; a queued one is ended right here."""
        state = slot.item
        if self._scheduler.remove_queued(slot):
            state.cancel_reason = reason
            self._slots.pop(slot.run_id, None)
            self._states.pop(slot.run_id, None)
            rec = state.record
            # PROTOCOL.md: a run cancelled while queued emits agent_started then agent_cancelled.
            await self._emit(rec, EventType.AGENT_STARTED, {"message": rec.input})
            await self._emit(rec, EventType.AGENT_CANCELLED, {"reason": reason, "duration_ms": 0.0})
            state.done.set()
            self.bridge.metrics.runs_finished.labels(status="cancelled").inc()
            self._update_gauges()
            return RunStatus.QUEUED
        if state.cancel_reason is None:
            state.cancel_reason = reason
            # A task cancelled before its first step would never run its
            # coroutine (and so never emit a terminal event): until _execute
            # has begun, the reason alone is enough — it is checked there.
            if state.started and state.task is not None:
                state.task.cancel()
        return RunStatus.RUNNING

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

    async def _execute(self, state: RunState) -> _Outcome:
        """Run one (sub-)run from ``agent_started`` to exactly one terminal event.

        A sub-run re-raises ``CancelledError`` after its ``agent_cancelled`` so
        that its parent ends after it.
        """
        rec = state.record
        loop = asyncio.get_running_loop()
        state.started = loop.time()
        is_sub = state.root is not None
        timer = None
        if not is_sub:
            timer = loop.call_later(self.settings.run_timeout_s, self._time_out, state)

        def elapsed_ms() -> float:
            return round((loop.time() - state.started) * 1000, 3)

        ctx = self._context(state)
        try:
            await self._emit(rec, EventType.AGENT_STARTED, {"message": rec.input})
            if state.top.cancel_reason is not None:
                raise asyncio.CancelledError  # cancelled between scheduling and start
            result = await self.registry.get(rec.agent).run(ctx)
            await ctx.aclose()
            if state.top.cancel_reason is not None:
                # The agent swallowed its cancellation; it is still cancelled.
                raise asyncio.CancelledError
            final, structured = result_text(result, ctx)
            data: dict[str, Any] = {
                "status": "success", "final_response": final, "duration_ms": elapsed_ms(),
            }  # fmt: skip
            if structured is not msgspec.UNSET:
                data["result"] = bounded_json(structured, self.settings.max_value_bytes)
            await self._emit_terminal(state, EventType.AGENT_COMPLETED, data)
            return _Outcome(RunStatus.COMPLETED, final)
        except asyncio.CancelledError:
            reason = state.top.cancel_reason
            if reason is None:
                raise  # not ours: the loop is going away; recovery ends the run
            task = asyncio.current_task()
            if not is_sub and task is not None:
                task.uncancel()
            await _quietly(ctx.aclose())
            if not is_sub and reason == TIMED_OUT:
                message = f"the run exceeded its {self.settings.run_timeout_s:g} s limit"
                await self._emit_terminal(
                    state, EventType.AGENT_ERROR,
                    {"error_type": "timeout", "message": message, "duration_ms": elapsed_ms()},
                )  # fmt: skip
                return _Outcome(RunStatus.FAILED, error="timeout")
            sub_reason = reason if not is_sub else f"parent run ended: {reason}"
            await self._emit_terminal(
                state, EventType.AGENT_CANCELLED,
                {"reason": sub_reason, "duration_ms": elapsed_ms()},
            )  # fmt: skip
            if is_sub:
                raise
            return _Outcome(RunStatus.CANCELLED, error=reason)
        except Exception as exc:
            await _quietly(ctx.aclose())
            message = sanitize_error(exc)
            await self._emit_terminal(
                state, EventType.AGENT_ERROR,
                {"error_type": type(exc).__name__, "message": message, "duration_ms": elapsed_ms()},
            )  # fmt: skip
            return _Outcome(RunStatus.FAILED, error=message)
        finally:
            if timer is not None:
                timer.cancel()

    async def _emit_terminal(
        self, state: RunState, event_type: str, data: dict[str, Any]
    ) -> StoredEvent:
        """Write a (sub-)run's one terminal event; a cancellation meanwhile waits for it.

        Once submitted, the event is appended whatever happens to its caller.
        Letting a cancellation (the run timer, a user's cancel, an interrupt)
        cut this wait short would make the run believe it had not ended and
        emit a second terminal event. So the wait is shielded and a
        cancellation that arrives meanwhile is held: a top-level run has
        ended anyway; a sub-run's parent gets it once this call returns (via
        ``held_cancel``, re-raised by :meth:`_delegate`).
        """
        emit = asyncio.ensure_future(self._emit(state.record, event_type, data))
        task = asyncio.current_task()
        while True:
            try:
                return await asyncio.shield(emit)
            except asyncio.CancelledError:
                if emit.cancelled():
                    raise  # the emit itself was cancelled (the loop is closing)
                state.held_cancel = True
                if task is not None:
                    task.uncancel()
                # Loop again: a finished emit returns (or raises) at once.

    def _time_out(self, state: RunState) -> None:
        if state.cancel_reason is None and state.task is not None and not state.task.done():
            state.cancel_reason = TIMED_OUT
            state.task.cancel()

    async def _delegate(self, parent_ctx: RunContext, agent: str, message: str) -> str:
        """Run a sub-run inside the parent's task and return its final response."""
        parent = self._states.get(parent_ctx.run_id)
        if parent is None:
            raise Unavailable("the parent run is no longer active")
        if agent not in self.registry:
            raise NotFound(f"unknown agent {agent!r}")
        prec = parent.record
        record, _ = await self.store.create_run(
            NewRun(new_run_id(), prec.thread_id, prec.user_id, agent, message,
                   parent_run_id=prec.run_id)
        )  # fmt: skip
        sub = RunState(record, root=parent.top)
        self._states[record.run_id] = sub
        try:
            outcome = await self._execute(sub)
        finally:
            self._states.pop(record.run_id, None)
        if sub.held_cancel:
            # The parent was cancelled while the sub-run wrote its terminal
            # event: deliver that cancellation to the parent now.
            raise asyncio.CancelledError
        if outcome.status is not RunStatus.COMPLETED:
            raise SubRunFailed(f"sub-agent {agent!r} failed: {outcome.error}")
        return outcome.final_response


async def _quietly(awaitable: Any) -> None:
    """Flush a context on an error path; a failure here must not hide the run's end."""
    try:
        await awaitable
    except Exception:
        logger.exception("flushing a run context failed")
