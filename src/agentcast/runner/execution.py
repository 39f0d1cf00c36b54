"""Executing one run or sub-run: from ``agent_started`` to exactly one terminal event.

The :class:`Executor` is the runner's half that runs agents; the other half
(:mod:`agentcast.runner.runner`) decides which runs may start and when. A
top-level run executes in its own task. A sub-run (``ctx.delegate``) executes
in the task that called ``delegate`` — its parent's, or one the agent made
with ``gather`` or ``create_task`` — and is a child of its parent in the run
tree (:mod:`agentcast.runner.state`), so cancelling or timing out the parent
reaches it, and a parent winds up only after every child has written its
terminal event.

The steps that must not be cut in half by a cancellation — ``agent_started``,
winding up, the terminal event, creating a sub-run's row — run to their end
(:func:`~agentcast.agents.whole.finish_anyway`); the cancellation is acted on
after them, from the reason recorded on the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..agents import (
    AgentRegistry,
    AgentSettings,
    RunContext,
    SubRunCancelled,
    SubRunFailed,
    result_text,
)
from ..agents.history import history_messages
from ..agents.sanitize import sanitize_error
from ..bridge import Bridge
from ..config import EngineSettings
from ..errors import InvalidTransition, NotFound, Unavailable
from ..event_size import check_start_message
from ..events import EventType, bounded_json
from ..log.base import StoredEvent
from ..store.base import NewRun, RunRecord, RunStatus, Store
from ..types import new_run_id
from .state import (
    CANCELLED,
    PARENT_ENDED,
    TIMED_OUT,
    Outcome,
    RunState,
    finish_anyway,
    request_cancel,
)

__all__ = ["Executor"]

logger = logging.getLogger(__name__)


class Executor:
    """Runs agents for the runner, one (sub-)run at a time per call.

    Args:
        bridge: Where every event goes.
        store: Where sub-runs' rows are created.
        registry: The agents.
        settings: Run timeout and value bounds.
        agent_settings: What each run's context gets.
        states: The runner's live runs by id (sub-runs are added and removed here).
    """

    def __init__(
        self,
        bridge: Bridge,
        store: Store,
        registry: AgentRegistry,
        settings: EngineSettings,
        agent_settings: AgentSettings,
        states: dict[str, RunState],
    ) -> None:
        self.bridge = bridge
        self.store = store
        self.registry = registry
        self.settings = settings
        self.agent_settings = agent_settings
        self.states = states

    async def emit(self, record: RunRecord, event_type: str, data: dict[str, Any]) -> StoredEvent:
        return await self.bridge.emit(
            thread_id=record.thread_id,
            run_id=record.run_id,
            parent_run_id=record.parent_run_id,
            agent=record.agent,
            event_type=event_type,
            data=data,
        )

    def context(self, state: RunState, history: Sequence[Mapping[str, Any]] = ()) -> RunContext:
        rec = state.record

        async def emit(event_type: str, data: Any) -> StoredEvent:
            if state.ending:  # nothing follows a terminal event
                raise InvalidTransition(f"run {rec.run_id} has ended")
            return await self.emit(rec, event_type, data)

        return RunContext(
            run_id=rec.run_id,
            thread_id=rec.thread_id,
            user_id=rec.user_id,
            agent=rec.agent,
            message=rec.input,
            parent_run_id=rec.parent_run_id,
            emit=emit,
            delegate=self.delegate,
            registry=self.registry,
            settings=self.agent_settings,
            history=history,
            on_usage=self._count_tokens,
        )

    def _count_tokens(self, agent: str, model: str, counts: Mapping[str, int]) -> None:
        tokens = self.bridge.metrics.llm_tokens
        tokens.labels(agent, model, "prompt").inc(counts.get("prompt_tokens", 0))
        tokens.labels(agent, model, "completion").inc(counts.get("completion_tokens", 0))

    async def history(self, record: RunRecord) -> tuple[dict[str, Any], ...]:
        """The thread's earlier turns for a top-level run, read as it starts; none for a sub-run.

        Read after ``agent_started``, so a run that waited in the queue sees
        the answer of the run before it (that run's turn was stored with its
        terminal event, which freed this run's slot).
        """
        if record.parent_run_id is not None:
            return ()
        turns = await self.store.history(
            record.thread_id,
            record.queue_pos,
            self.agent_settings.history_max_turns,
            self.agent_settings.history_max_tokens,
        )
        return history_messages(turns)

    async def execute(self, state: RunState) -> Outcome:
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
            timer = loop.call_later(self.settings.run_timeout_s, _time_out, state)

        def elapsed_ms() -> float:
            return round((loop.time() - state.started) * 1000, 3)

        ctx: RunContext | None = None  # made once the history is read
        try:
            try:
                await finish_anyway(self.emit(rec, EventType.AGENT_STARTED, {"message": rec.input}))
                if state.cancel_reason is not None:
                    raise asyncio.CancelledError  # cancelled before the agent began
                # A failed read ends the run agent_error: never a run that
                # silently forgot its conversation.
                ctx = self.context(state, await self.history(rec))
                result = await self.registry.get(rec.agent).run(ctx)
                final, structured = result_text(result, ctx)
                data: dict[str, Any] = {"status": "success", "final_response": final}
                if structured is not msgspec.UNSET:
                    data["result"] = bounded_json(structured, self.settings.max_value_bytes)
                if ctx.usage is not msgspec.UNSET:
                    data["usage"] = ctx.usage  # sub-runs' usage already added by delegate
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

    async def _wind_up(self, state: RunState, ctx: RunContext | None) -> None:
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
            request_cancel(child, f"{PARENT_ENDED}: {state.cancel_reason or 'it returned'}")
        for child in children:
            await child.done.wait()
        try:
            if ctx is not None:
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
            await finish_anyway(self.emit(state.record, outcome.event_type, data))
            return outcome
        except Exception as exc:
            if outcome.event_type == EventType.AGENT_ERROR:
                raise
            logger.exception("the terminal event of run %s was refused", state.run_id)
            failed = _failed(type(exc).__name__, sanitize_error(exc))
            data = {**failed.data, "duration_ms": elapsed_ms()}
            await finish_anyway(self.emit(state.record, failed.event_type, data))
            return failed
        finally:
            state.done.set()

    async def delegate(self, parent_ctx: RunContext, agent: str, message: str) -> str:
        """Run a sub-run in the calling task and return its final response.

        Raises:
            SubRunFailed: the sub-run ended with ``agent_error``.
            SubRunCancelled: the sub-run was cancelled by its own id.
            NotFound: no agent of that name.
            EventTooLarge: ``message`` would make the sub-run's ``agent_started``
                larger than ``max_event_bytes``.
            Unavailable: the parent run is winding up or over.
        """
        parent = self.states.get(parent_ctx.run_id)
        if parent is None or parent.closing:
            raise Unavailable("the parent run has ended")
        if agent not in self.registry:
            raise NotFound(f"unknown agent {agent!r}")
        check_start_message(message, self.settings.max_event_bytes)
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
            self.states[sub.run_id] = sub
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
            outcome = await self.execute(sub)
            if "usage" in outcome.data:  # a model's tokens count toward the run that asked
                parent_ctx.report_usage(outcome.data["usage"])
        finally:
            parent.children.discard(sub)
            self.states.pop(record.run_id, None)
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


def _time_out(state: RunState) -> None:
    if state.task is not None and not state.task.done():
        request_cancel(state, TIMED_OUT)


def _failed(error_type: str, message: str) -> Outcome:
    # error_type is a bounded name (256 characters, events.Name): an exception
    # class with a longer name must not cost the run its terminal event.
    return Outcome(
        RunStatus.FAILED,
        EventType.AGENT_ERROR,
        {"error_type": error_type[:256], "message": message},
        error=message,
    )
