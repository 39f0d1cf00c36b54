"""Crash recovery: no run stays active forever, no accepted run is forgotten.

A process that dies (SIGKILL, power loss) leaves runs ``running`` or
``queued`` in the store. On the next start, before accepting new runs:

1. every run left ``running`` — and every sub-run left active — is ended:
   its open tool calls get ``tool_completed`` with status ``error``, then the
   run gets ``agent_error`` with ``error_type: "interrupted"``; sub-runs are
   ended before their parents (docs/architecture.md invariant 3);
2. every top-level run left ``queued`` is queued again, in its original order.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ..events import EventType
from ..store.base import RunRecord, RunStatus

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["open_tool_calls", "recover"]

logger = logging.getLogger(__name__)

INTERRUPTED_MESSAGE = "the server stopped while the run was in progress"


class _ToolData(msgspec.Struct):
    tool_call_id: str = ""
    tool_name: str = ""


class _Envelope(msgspec.Struct):
    run_id: str
    type: str
    ts: float
    data: _ToolData


_decoder = msgspec.json.Decoder(_Envelope)


async def open_tool_calls(runner: Runner, record: RunRecord) -> list[tuple[str, str, float]]:
    """``(tool_call_id, tool_name, started_ts)`` of the run's unpaired ``tool_executing``."""
    if record.first_seq is None:
        return []
    open_calls: dict[str, tuple[str, str, float]] = {}
    after = record.first_seq - 1
    while True:
        batch = await runner.bridge.read(record.thread_id, after, 1000)
        if not batch:
            break
        for ev in batch:
            if ev.run_id != record.run_id:
                continue
            if ev.type == EventType.TOOL_EXECUTING:
                env = _decoder.decode(ev.raw)
                open_calls[env.data.tool_call_id] = (
                    env.data.tool_call_id, env.data.tool_name, env.ts,
                )  # fmt: skip
            elif ev.type == EventType.TOOL_COMPLETED:
                open_calls.pop(_decoder.decode(ev.raw).data.tool_call_id, None)
        after = batch[-1].seq
    return list(open_calls.values())


def _depth(record: RunRecord, by_id: dict[str, RunRecord]) -> int:
    depth, parent = 0, record.parent_run_id
    while parent is not None and parent in by_id and depth < 100:
        depth += 1
        parent = by_id[parent].parent_run_id
    return depth


async def recover(runner: Runner) -> None:
    """End interrupted runs and queue again the runs that never started."""
    active = await runner.store.active_runs()
    by_id = {r.run_id: r for r in active}
    interrupted = [r for r in active if r.status is RunStatus.RUNNING or r.parent_run_id]
    interrupted.sort(key=lambda r: -_depth(r, by_id))  # children before parents
    now = time.time()
    for record in interrupted:
        await _end_interrupted(runner, record, now)
    requeued = [r for r in active if r.status is RunStatus.QUEUED and r.parent_run_id is None]
    for record in requeued:
        runner._admit(record)  # the runner's own bookkeeping, in queue order
    if interrupted or requeued:
        logger.warning(
            "recovered %d interrupted and %d queued runs", len(interrupted), len(requeued)
        )


async def _end_interrupted(runner: Runner, record: RunRecord, now: float) -> None:
    emit = runner._emit
    if record.status is RunStatus.QUEUED:
        # A sub-run recorded but never started still owes its agent_started.
        await emit(record, EventType.AGENT_STARTED, {"message": record.input})
    for call_id, name, started in await open_tool_calls(runner, record):
        data: dict[str, Any] = {
            "tool_call_id": call_id,
            "tool_name": name,
            "status": "error",
            "error": "interrupted",
            "duration_ms": round(max(0.0, now - started) * 1000, 3),
        }
        await emit(record, EventType.TOOL_COMPLETED, data)
    began = record.started_at or record.created_at
    await emit(
        record,
        EventType.AGENT_ERROR,
        {
            "error_type": "interrupted",
            "message": INTERRUPTED_MESSAGE,
            "duration_ms": round(max(0.0, now - began) * 1000, 3),
        },
    )
