"""The store queries retention needs (``thread_ids``, ``run_spans``), on every backend."""

from __future__ import annotations

from typing import Any

from agentcast.store.base import NewRun, RunSpan, RunStatus
from agentcast.types import new_run_id
from tests.conftest import EngineFactory


async def test_thread_ids_page_through_every_users_threads_in_id_order(
    make_engine: EngineFactory,
) -> None:
    store = (await make_engine()).store
    made = sorted([(await store.create_thread(user)).thread_id for user in "abcab"])
    assert await store.thread_ids() == made
    assert await store.thread_ids(limit=2) == made[:2]
    assert await store.thread_ids(made[1], limit=2) == made[2:4]
    assert await store.thread_ids(made[-1]) == []


async def test_run_spans_are_active_runs_and_runs_reaching_from_seq(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    store, bridge = engine.store, engine.bridge
    thread = (await store.create_thread("alice")).thread_id
    elsewhere = (await store.create_thread("alice")).thread_id

    async def run(parent: str | None = None, where: str = thread) -> str:
        record, _ = await store.create_run(
            NewRun(new_run_id(), where, "alice", "echo", "go", parent_run_id=parent)
        )
        return record.run_id

    async def emit(run_id: str, kind: str, parent: str | None = None) -> None:
        data: dict[str, Any] = (
            {"message": "go"}
            if kind == "agent_started"
            else {"status": "success", "final_response": "ok", "duration_ms": 1}
        )
        await bridge.emit(
            thread_id=thread, run_id=run_id, event_type=kind, data=data, parent_run_id=parent
        )

    old = await run()
    await emit(old, "agent_started")  # 1
    await emit(old, "agent_completed")  # 2
    parent = await run()
    await emit(parent, "agent_started")  # 3
    child = await run(parent)
    await emit(child, "agent_started", parent)  # 4
    await emit(child, "agent_completed", parent)  # 5
    queued = await run()  # no events yet
    await run(where=elsewhere)

    spans = await store.run_spans(thread, 3)
    assert spans == [
        RunSpan(parent, None, RunStatus.RUNNING, 3, 3),
        RunSpan(child, parent, RunStatus.COMPLETED, 4, 5),
        RunSpan(queued, None, RunStatus.QUEUED, None, None),
    ]
    assert [s.is_active for s in spans] == [True, False, True]
    assert [s.run_id for s in await store.run_spans(thread)] == [old, parent, child, queued]
    # Runs wholly below from_seq are left out, active ones never are.
    assert [s.run_id for s in await store.run_spans(thread, 6)] == [parent, queued]
