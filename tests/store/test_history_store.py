"""``Store.history``: turns stored with terminal events, on both stores, and the migration.

Events are emitted straight through the bridge here, to write what no agent
of the tests can: a call a dead process left open and recovery answered, a
tool that timed out, a tool that returned nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest

from agentcast.agents.history import INTERRUPTED_MARKER
from agentcast.engine import Engine
from agentcast.runner.recovery import INTERRUPTED, INTERRUPTED_MESSAGE
from agentcast.store.base import NewRun
from agentcast.types import new_run_id
from tests.conftest import EngineFactory


class Emitter:
    """One run's events, emitted in order through the bridge."""

    def __init__(self, engine: Engine, thread_id: str, run_id: str) -> None:
        self.engine, self.thread_id, self.run_id = engine, thread_id, run_id

    async def __call__(self, event_type: str, **data: Any) -> None:
        await self.engine.bridge.emit(
            thread_id=self.thread_id, run_id=self.run_id, event_type=event_type, data=data
        )


async def new_run(engine: Engine, thread_id: str, message: str) -> Emitter:
    record, _ = await engine.store.create_run(
        NewRun(new_run_id(), thread_id, "alice", "echo", message)
    )
    emit = Emitter(engine, thread_id, record.run_id)
    await emit("agent_started", message=message)
    return emit


async def test_recovered_open_calls_are_left_out_and_answers_are_strings(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    thread = (await engine.store.create_thread("alice")).thread_id
    emit = await new_run(engine, thread, "go")
    await emit("tool_executing", tool_call_id="c1", tool_name="slow", parameters={"n": 1})
    await emit("tool_completed", tool_call_id="c1", tool_name="slow", status="timeout",
               duration_ms=5, error="the tool exceeded its 1 s limit")  # fmt: skip
    await emit("tool_executing", tool_call_id="c2", tool_name="none", parameters={})
    await emit("tool_completed", tool_call_id="c2", tool_name="none", status="success",
               duration_ms=1, results=None)  # fmt: skip
    await emit("text_delta", message_id="m", delta="Still ")
    await emit("text_delta", message_id="m", delta="working")
    await emit("tool_executing", tool_call_id="c3", tool_name="slow", parameters={"n": 2})
    # What recovery writes after a restart (runner/recovery.py, plan_tree).
    await emit("tool_completed", tool_call_id="c3", tool_name="slow", status="error",
               duration_ms=9, error=INTERRUPTED)  # fmt: skip
    await emit("agent_error", error_type=INTERRUPTED, message=INTERRUPTED_MESSAGE, duration_ms=9)

    assert await engine.store.history(thread, 10**9, 20, 8000) == [
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "slow", "arguments": '{"n":1}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "none", "arguments": "{}"},
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": "Timeout: the tool exceeded its 1 s limit",
            },
            {"role": "tool", "tool_call_id": "c2", "content": "null"},
            {"role": "assistant", "content": f"Still working\n\n{INTERRUPTED_MARKER}"},
        ]
    ]


async def test_history_is_per_thread_and_before_the_given_position(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    mine = (await engine.store.create_thread("alice")).thread_id
    other = (await engine.store.create_thread("alice")).thread_id
    for thread, message in ((mine, "one"), (other, "elsewhere"), (mine, "two")):
        emit = await new_run(engine, thread, message)
        await emit("agent_completed", status="success", final_response=message.upper(),
                   duration_ms=1)  # fmt: skip
    runs = await engine.store.list_runs("alice", mine)
    assert await engine.store.history(mine, runs[1].queue_pos, 20, 8000) == [
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "ONE"}]
    ]
    assert len(await engine.store.history(mine, runs[1].queue_pos + 1, 20, 8000)) == 2
    assert await engine.store.history(mine, runs[0].queue_pos, 20, 8000) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_migration_fills_turns_of_runs_that_ended_before_it(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    thread = (await engine.store.create_thread("alice")).thread_id
    done = await new_run(engine, thread, "hello")
    await done("agent_completed", status="success", final_response="hi", duration_ms=1)
    failed = await new_run(engine, thread, "oops")
    await failed("agent_error", error_type="RuntimeError", message="boom", duration_ms=1)
    data_dir = engine.settings.data_dir
    await engine.shutdown(grace_s=0)
    with contextlib.closing(sqlite3.connect(data_dir / "agentcast.db")) as conn:
        conn.execute("DROP TABLE turns")
        conn.execute("UPDATE schema_version SET version = 2")
        conn.commit()

    again = await make_engine(data_dir=data_dir)
    assert await again.store.history(thread, 10**9, 20, 8000) == [
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "oops"}],
    ]
