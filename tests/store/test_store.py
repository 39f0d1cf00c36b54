"""The store contract, on every backend: ownership, pagination, idempotency, projection."""

from __future__ import annotations

import time

import pytest

from agentcast.errors import NotFound
from agentcast.store.base import NewRun, RunStatus
from agentcast.types import new_run_id
from tests.conftest import EngineFactory
from tests.utils import wait_until


async def test_threads_are_owned_and_listed_newest_first(make_engine: EngineFactory) -> None:
    store = (await make_engine()).store
    made = []
    for i in range(5):
        made.append(await store.create_thread("alice", title=f"t{i}"))
        # The next thread must be strictly newer: wait for the clock, not a fixed time.
        await wait_until(lambda: time.time() > made[-1].updated_at, message="the clock to tick")
    await store.create_thread("bob")
    page1 = await store.list_threads("alice", limit=2)
    assert [t.title for t in page1] == ["t4", "t3"]
    cursor = (page1[-1].updated_at, page1[-1].thread_id)
    page2 = await store.list_threads("alice", limit=10, before=cursor)
    assert [t.title for t in page2] == ["t2", "t1", "t0"]
    assert (await store.get_thread("alice", made[0].thread_id)).user_id == "alice"
    with pytest.raises(NotFound):
        await store.get_thread("bob", made[0].thread_id)
    with pytest.raises(NotFound):
        await store.get_thread("alice", "th_made_up")


async def test_check_thread_answers_like_get_thread_for_every_caller(
    make_engine: EngineFactory,
) -> None:
    """The owner check (subscribe, run start) refuses others exactly like a made-up id."""
    store = (await make_engine()).store
    thread = await store.create_thread("alice")
    for _ in range(2):  # the second round is answered from memory where a backend caches
        await store.check_thread("alice", thread.thread_id)
        with pytest.raises(NotFound, match=r"^thread not found$"):
            await store.check_thread("bob", thread.thread_id)
        with pytest.raises(NotFound, match=r"^thread not found$"):
            await store.check_thread("alice", "th_made_up")


async def test_create_run_checks_ownership_and_is_idempotent_per_user(
    make_engine: EngineFactory,
) -> None:
    store = (await make_engine()).store
    thread = await store.create_thread("alice")
    with pytest.raises(NotFound):
        await store.create_run(NewRun(new_run_id(), thread.thread_id, "bob", "echo", "x"))
    first, created = await store.create_run(
        NewRun(new_run_id(), thread.thread_id, "alice", "echo", "hi", idempotency_key="k")
    )
    again, created_again = await store.create_run(
        NewRun(new_run_id(), thread.thread_id, "alice", "echo", "hi", idempotency_key="k")
    )
    assert (created, created_again, again.run_id) == (True, False, first.run_id)
    assert first.status is RunStatus.QUEUED
    assert (await store.find_run_by_key("alice", "k")) == first
    assert await store.find_run_by_key("bob", "k") is None
    assert [r.run_id for r in await store.active_runs()] == [first.run_id]
    assert (await store.get_thread("alice", thread.thread_id)).last_agent == "echo"
    with pytest.raises(NotFound):
        await store.get_run("bob", first.run_id)


async def test_status_is_projected_from_the_runs_events(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    store, bridge = engine.store, engine.bridge
    thread = await store.create_thread("alice")
    run, _ = await store.create_run(NewRun(new_run_id(), thread.thread_id, "alice", "echo", "q"))

    async def emit(event_type: str, data: dict[str, object]) -> int:
        stored = await bridge.emit(
            thread_id=thread.thread_id, run_id=run.run_id, event_type=event_type, data=data
        )
        return stored.seq

    s1 = await emit("agent_started", {"message": "q"})
    record = await store.get_run("alice", run.run_id)
    assert (record.status, record.first_seq, record.last_seq) == (RunStatus.RUNNING, s1, s1)
    s2 = await emit("agent_thinking", {"reasoning": "r"})
    assert (await store.get_run("alice", run.run_id)).last_seq == s2
    s2 = await emit("agent_thinking", {"reasoning": "r2"})  # every way of reading sees it
    assert [r.last_seq for r in await store.active_runs()] == [s2]
    assert [r.last_seq for r in await store.list_runs("alice", thread.thread_id)] == [s2]
    found = await store.find_run(run.run_id)
    assert found is not None
    assert found.last_seq == s2
    s3 = await emit(
        "agent_completed", {"status": "success", "final_response": "a", "duration_ms": 1}
    )
    record = await store.get_run("alice", run.run_id)
    assert (record.status, record.last_seq, record.output) == (RunStatus.COMPLETED, s3, "a")
    assert record.ended_at is not None
    assert await store.active_runs() == []
    messages = await store.list_messages("alice", thread.thread_id)
    assert [(m.role, m.content) for m in messages] == [("user", "q"), ("assistant", "a")]
