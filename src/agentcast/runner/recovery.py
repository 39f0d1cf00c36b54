"""Crash recovery: no run stays active forever, no accepted run is forgotten.

A process that dies (SIGKILL, power loss) leaves runs ``running`` or
``queued`` in the store. Recovery is split like the scheduler: a planner
with no I/O, and the runner carrying its plan out.

* :func:`plan_tree` decides which events end runs that nobody is running any
  more: for each run, deepest sub-runs first, ``agent_started`` if it never
  started, ``tool_completed`` (status ``error``) for each tool call it left
  open, then ``agent_error``. Its input is the runs (one run tree, or
  several) and their open tool calls; its output is the steps, in order. The
  ``error_type`` says why: ``interrupted`` after a restart here, and the same
  plan serves a run tree whose worker or external producer was lost.
* :func:`recover`, at start-up and before new runs are accepted, reads what
  the plan needs (the store's active runs, each running run's open tool calls
  from the log), writes the plan's events through the runner, and queues the
  top-level runs that never started again, in their original order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..events import EventType
from ..store.base import RunRecord, RunStatus

if TYPE_CHECKING:
    from ..bridge import Bridge
    from .runner import Runner

__all__ = ["INTERRUPTED", "OpenToolCall", "Step", "open_tool_calls", "plan_tree", "recover"]

logger = logging.getLogger(__name__)

#: The ``error_type`` of runs ended because their process stopped.
INTERRUPTED: Final = "interrupted"
INTERRUPTED_MESSAGE: Final = "the server stopped while the run was in progress"


@dataclass(frozen=True, slots=True)
class OpenToolCall:
    """A ``tool_executing`` with no ``tool_completed`` yet."""

    tool_call_id: str
    tool_name: str
    started_ts: float


@dataclass(frozen=True, slots=True)
class Step:
    """One event of the plan, for one run."""

    record: RunRecord
    event_type: str
    data: dict[str, Any]


def plan_tree(
    runs: Sequence[RunRecord],
    open_calls: Mapping[str, Sequence[OpenToolCall]],
    *,
    now: float,
    error_type: str = INTERRUPTED,
    message: str = INTERRUPTED_MESSAGE,
) -> list[Step]:
    """The events that end ``runs``, deepest sub-runs first; no I/O.

    Args:
        runs: The active runs of one run tree (or of several).
        open_calls: By run id, the tool calls each run left open.
        now: The time the runs are ended at (for ``duration_ms``).
        error_type: Why they end (``agent_error.error_type``).
        message: What the user is told.
    """
    by_id = {r.run_id: r for r in runs}
    steps: list[Step] = []
    for record in sorted(runs, key=lambda r: -_depth(r, by_id)):  # stable: ties keep order
        if record.status is RunStatus.QUEUED:
            # Recorded but never started: it still owes its agent_started.
            steps.append(Step(record, EventType.AGENT_STARTED, {"message": record.input}))
        for call in open_calls.get(record.run_id, ()):
            data: dict[str, Any] = {
                "tool_call_id": call.tool_call_id,
                "tool_name": call.tool_name,
                "status": "error",
                "error": error_type,
                "duration_ms": _ms(now - call.started_ts),
            }
            steps.append(Step(record, EventType.TOOL_COMPLETED, data))
        began = record.started_at or record.created_at
        ended = {"error_type": error_type, "message": message, "duration_ms": _ms(now - began)}
        steps.append(Step(record, EventType.AGENT_ERROR, ended))
    return steps


async def recover(runner: Runner) -> None:
    """End interrupted runs and queue again the runs that never started."""
    active = await runner.store.active_runs()
    interrupted = [r for r in active if r.status is RunStatus.RUNNING or r.parent_run_id]
    open_calls = {
        r.run_id: await open_tool_calls(runner.bridge, r)
        for r in interrupted
        if r.status is RunStatus.RUNNING
    }
    for step in plan_tree(interrupted, open_calls, now=time.time()):
        await runner._emit(step.record, step.event_type, step.data)
    requeued = [r for r in active if r.status is RunStatus.QUEUED and r.parent_run_id is None]
    for record in requeued:
        runner._admit(record)  # the runner's own bookkeeping, in queue order
    if interrupted or requeued:
        logger.warning(
            "recovered %d interrupted and %d queued runs", len(interrupted), len(requeued)
        )


class _ToolData(msgspec.Struct):
    tool_call_id: str = ""
    tool_name: str = ""


class _Envelope(msgspec.Struct):
    run_id: str
    type: str
    ts: float
    data: _ToolData


_decoder = msgspec.json.Decoder(_Envelope)


async def open_tool_calls(bridge: Bridge, record: RunRecord) -> list[OpenToolCall]:
    """The run's ``tool_executing`` events that have no ``tool_completed``, in order."""
    if record.first_seq is None:
        return []
    open_calls: dict[str, OpenToolCall] = {}
    after = record.first_seq - 1
    while True:
        batch = await bridge.read(record.thread_id, after, 1000)
        if not batch:
            break
        for ev in batch:
            if ev.run_id != record.run_id:
                continue
            if ev.type == EventType.TOOL_EXECUTING:
                env = _decoder.decode(ev.raw)
                call = OpenToolCall(env.data.tool_call_id, env.data.tool_name, env.ts)
                open_calls[call.tool_call_id] = call
            elif ev.type == EventType.TOOL_COMPLETED:
                open_calls.pop(_decoder.decode(ev.raw).data.tool_call_id, None)
        after = batch[-1].seq
    return list(open_calls.values())


def _depth(record: RunRecord, by_id: Mapping[str, RunRecord]) -> int:
    depth, parent = 0, record.parent_run_id
    while parent is not None and parent in by_id and depth < 100:
        depth += 1
        parent = by_id[parent].parent_run_id
    return depth


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000, 3)
