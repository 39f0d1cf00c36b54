"""Runs end to end below the network: lifecycle, cancel, timeout, limits, isolation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentcast.agents import RunContext
from agentcast.engine import Engine
from agentcast.errors import InvalidInput, LimitExceeded, NotFound, RunActive
from agentcast.events import TERMINAL_TYPES
from agentcast.log.base import StoredEvent
from agentcast.store.base import RunRecord, RunStatus
from tests.conftest import EngineFactory
from tests.invariants import assert_status_matches
from tests.runner.helpers import data_of, test_registry, thread_events, types_of, wait_run
from tests.utils import wait_until


async def test_echo_run_is_exactly_started_thinking_completed(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    ticket = await engine.runner.start_run("alice", "echo", "hello there")
    assert ticket.after_seq == 0
    record = await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "agent_thinking", "agent_completed"]
    assert events[0].data == {"message": "hello there"}
    assert events[2].data["final_response"] == "hello there"
    assert events[2].data["status"] == "success"
    assert {e.agent for e in events} == {"echo"}
    assert (await engine.bridge.info(ticket.thread_id)).epoch == ticket.epoch
    assert_status_matches(record, events)
    assert record.output == "hello there"
    messages = await engine.store.list_messages("alice", ticket.thread_id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "hello there"),
        ("assistant", "hello there"),
    ]


async def test_countdown_emits_exactly_n_steps(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    ticket = await engine.runner.start_run("alice", "countdown", "3 10")
    await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started"] + ["agent_thinking"] * 3 + ["agent_completed"]


async def test_failing_agent_ends_with_a_sanitised_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(test_registry())
    ticket = await engine.runner.start_run("alice", "failing", "x")
    record = await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "agent_thinking", "agent_error"]
    error = events[-1].data
    assert error["error_type"] == "RuntimeError"
    assert "/home/alice" not in error["message"]
    assert "sk-123456" not in error["message"]
    assert "boom" in error["message"]
    assert record.status is RunStatus.FAILED


async def test_timeout_ends_the_run_and_its_open_tool_call(make_engine: EngineFactory) -> None:
    engine = await make_engine(test_registry(), run_timeout_s=0.3)
    started = time.monotonic()
    ticket = await engine.runner.start_run("alice", "hanger", "x")
    record = await wait_run(engine, "alice", ticket.run_id)
    assert time.monotonic() - started < 2
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == [
        "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_error",
    ]  # fmt: skip
    assert events[3].data["status"] == "cancelled"
    assert events[4].data["error_type"] == "timeout"
    assert record.status is RunStatus.FAILED


def slow_terminal_writes(engine: Engine, delay: float) -> None:
    """Terminal events become durable at once, but their caller hears of it ``delay`` later."""
    real_emit = engine.runner.executor.emit

    async def emit(record: RunRecord, event_type: str, data: dict[str, Any]) -> StoredEvent:
        stored = await real_emit(record, event_type, data)
        if event_type in TERMINAL_TYPES:
            await asyncio.sleep(delay)
        return stored

    engine.runner.executor.emit = emit  # type: ignore[method-assign]


@pytest.mark.parametrize("cause", ["timeout", "cancel"])
async def test_a_cancellation_during_the_terminal_write_adds_no_second_terminal(
    make_engine: EngineFactory, cause: str
) -> None:
    """The run timer or a user's cancel, firing while agent_completed is being written."""
    engine = await make_engine(test_registry(), run_timeout_s=0.5)
    slow_terminal_writes(engine, 1.0)
    ticket = await engine.runner.start_run("alice", "echo", "hi")
    await wait_until(lambda: engine.runner.running_count == 1, message="echo to start running")
    if cause == "cancel":
        await asyncio.sleep(0.2)  # agent_completed is durable, its writer still waits
        await engine.runner.cancel("alice", run_id=ticket.run_id)
    record = await wait_run(engine, "alice", ticket.run_id)
    await asyncio.wait_for(engine.runner.wait_idle(), 10)
    events = await thread_events(engine, ticket.thread_id)  # exactly one terminal per run
    assert types_of(events) == ["agent_started", "agent_thinking", "agent_completed"]
    assert record.status is RunStatus.COMPLETED
    assert_status_matches(record, events)


async def test_a_parent_cancelled_while_its_sub_run_ends_ends_after_it(
    make_engine: EngineFactory,
) -> None:
    """The sub-run's one terminal event, then the parent's cancellation: never two for one run."""
    registry = test_registry()

    async def parent_of_echo(ctx: RunContext) -> str:
        answer = await ctx.delegate("echo", "from the parent")
        await asyncio.sleep(30)  # a cancellation held back must still arrive
        return answer

    registry.register(parent_of_echo, name="parent_of_echo", description="delegates to echo")
    engine = await make_engine(registry, run_timeout_s=0.5)
    slow_terminal_writes(engine, 1.0)
    ticket = await engine.runner.start_run("alice", "parent_of_echo", "x")
    record = await wait_run(engine, "alice", ticket.run_id)
    await asyncio.wait_for(engine.runner.wait_idle(), 10)
    events = await thread_events(engine, ticket.thread_id)  # exactly one terminal per run
    sub = [e for e in events if e.parent_run_id == ticket.run_id]
    assert [e.type for e in sub] == ["agent_started", "agent_thinking", "agent_completed"]
    assert events[-1].run_id == ticket.run_id
    assert events[-1].type == "agent_error"
    assert events[-1].data["error_type"] == "timeout"
    assert record.status is RunStatus.FAILED


async def test_cancel_by_run_stops_countdown_within_a_second(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    ticket = await engine.runner.start_run("alice", "countdown", "50 100")
    await wait_until(lambda: engine.runner.running_count == 1, message="countdown to start running")
    await asyncio.sleep(0.15)
    t0 = time.monotonic()
    result = await engine.runner.cancel("alice", run_id=ticket.run_id)
    assert (result.run_id, result.thread_id, result.status) == (
        ticket.run_id,
        ticket.thread_id,
        RunStatus.RUNNING,
    )
    record = await wait_run(engine, "alice", ticket.run_id)
    assert time.monotonic() - t0 < 1.0
    events = await thread_events(engine, ticket.thread_id)
    assert events[-1].type == "agent_cancelled"
    assert events[-1].data["reason"] == "cancelled by user"
    assert 1 <= types_of(events).count("agent_thinking") < 50
    assert_status_matches(record, events)
    # Cancelling again: the final status, no second terminal event.
    again = await engine.runner.cancel("alice", run_id=ticket.run_id)
    assert (again.run_id, again.status) == (ticket.run_id, RunStatus.CANCELLED)
    assert len(await thread_events(engine, ticket.thread_id)) == len(events)


async def test_cancel_by_thread_and_a_sub_run_ends_first(make_engine: EngineFactory) -> None:
    engine = await make_engine(test_registry())
    ticket = await engine.runner.start_run("alice", "parent", "x")

    async def tool_running() -> bool:
        return "tool_executing" in types_of(await thread_events_loose(engine, ticket.thread_id))

    await wait_until(tool_running, message="the sub-run's tool to start")
    result = await engine.runner.cancel("alice", thread_id=ticket.thread_id)
    assert (result.run_id, result.status) == (ticket.run_id, RunStatus.RUNNING)
    await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    sub_id = next(e.run_id for e in events if e.parent_run_id == ticket.run_id)
    assert [(e.type, e.run_id) for e in events if e.type.startswith(("agent_", "tool_"))] == [
        ("agent_started", ticket.run_id),
        ("agent_thinking", ticket.run_id),
        ("agent_started", sub_id),
        ("agent_thinking", sub_id),
        ("tool_executing", sub_id),
        ("tool_completed", sub_id),
        ("agent_cancelled", sub_id),
        ("agent_cancelled", ticket.run_id),
    ]
    assert events[5].data["status"] == "cancelled"
    sub = await engine.store.get_run("alice", sub_id)
    assert sub.status is RunStatus.CANCELLED
    assert sub.parent_run_id == ticket.run_id


async def thread_events_loose(engine: object, thread_id: str) -> list:  # type: ignore[type-arg]
    from tests.invariants import decode_all

    return decode_all(await engine.bridge.read(thread_id, 0, 10_000))  # type: ignore[attr-defined]


async def test_an_agent_that_swallows_cancellation_still_ends_cancelled(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(test_registry())
    ticket = await engine.runner.start_run("alice", "stubborn", "x")
    await wait_until(lambda: engine.runner.running_count == 1)
    await asyncio.sleep(0.05)
    await engine.runner.cancel("alice", run_id=ticket.run_id)
    record = await wait_run(engine, "alice", ticket.run_id)
    assert record.status is RunStatus.CANCELLED


async def test_on_active_reject_enqueue_interrupt(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    first = await engine.runner.start_run("alice", "countdown", "20 50")
    thread = first.thread_id

    async def first_is_thinking() -> bool:
        return "agent_thinking" in types_of(await thread_events_loose(engine, thread))

    await wait_until(first_is_thinking, message="the first run to be under way")
    with pytest.raises(RunActive):
        await engine.runner.start_run("alice", "echo", "no", thread_id=thread)
    second = await engine.runner.start_run(
        "alice", "echo", "queued", thread_id=thread, on_active="enqueue"
    )
    third = await engine.runner.start_run(
        "alice", "echo", "also queued", thread_id=thread, on_active="enqueue"
    )
    assert (await engine.store.get_run("alice", second.run_id)).status is RunStatus.QUEUED
    fourth = await engine.runner.start_run(
        "alice", "echo", "now", thread_id=thread, on_active="interrupt"
    )
    for t in (first, second, third, fourth):
        await wait_run(engine, "alice", t.run_id)
    events = await thread_events(engine, thread)
    by_run = [(e.run_id, e.type) for e in events if e.type.startswith("agent_") and
              e.type != "agent_thinking"]  # fmt: skip
    assert by_run == [
        (first.run_id, "agent_started"),
        (second.run_id, "agent_started"),
        (second.run_id, "agent_cancelled"),
        (third.run_id, "agent_started"),
        (third.run_id, "agent_cancelled"),
        (first.run_id, "agent_cancelled"),
        (fourth.run_id, "agent_started"),
        (fourth.run_id, "agent_completed"),
    ]
    reasons = {e.run_id: e.data["reason"] for e in events if e.type == "agent_cancelled"}
    assert set(reasons.values()) == {"interrupted by a new message"}


async def test_enqueued_runs_run_in_order(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    first = await engine.runner.start_run("alice", "countdown", "2 20")
    rest = [
        await engine.runner.start_run(
            "alice", "echo", f"m{i}", thread_id=first.thread_id, on_active="enqueue"
        )
        for i in range(3)
    ]
    for t in (first, *rest):
        await wait_run(engine, "alice", t.run_id)
    events = await thread_events(engine, first.thread_id)
    starts = [e.run_id for e in events if e.type == "agent_started"]
    assert starts == [first.run_id, *(t.run_id for t in rest)]
    assert [d["final_response"] for d in data_of(events, "agent_completed")][1:] == [
        "m0", "m1", "m2",
    ]  # fmt: skip


async def test_per_user_limits(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_runs_per_user=2, max_queued_per_user=2)
    tickets = [await engine.runner.start_run("alice", "countdown", "3 30") for _ in range(4)]
    assert (engine.runner.running_count, engine.runner.queued_count) == (2, 2)
    with pytest.raises(LimitExceeded):
        await engine.runner.start_run("alice", "echo", "too many")
    other = await engine.runner.start_run("bob", "echo", "fine")  # other users unaffected
    assert (engine.runner.running_count, engine.runner.queued_count) == (3, 2)
    for t in tickets[2:]:
        assert (await engine.store.get_run("alice", t.run_id)).status is RunStatus.QUEUED
    await wait_run(engine, "bob", other.run_id)
    records = [await wait_run(engine, "alice", t.run_id) for t in tickets]
    assert all(r.status is RunStatus.COMPLETED for r in records)
    starts = sorted(records, key=lambda r: r.started_at or 0)
    assert [r.run_id for r in starts[:2]] == [t.run_id for t in tickets[:2]]
    assert {r.run_id for r in starts[2:]} == {t.run_id for t in tickets[2:]}


async def test_idempotency_key_returns_the_same_run(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    a = await engine.runner.start_run("alice", "echo", "once", idempotency_key="k1")
    b = await engine.runner.start_run("alice", "echo", "once", idempotency_key="k1")
    assert (b.run_id, b.thread_id, b.created) == (a.run_id, a.thread_id, False)
    c = await engine.runner.start_run("bob", "echo", "once", idempotency_key="k1")
    assert c.run_id != a.run_id  # keys are per user
    await wait_run(engine, "alice", a.run_id)
    assert types_of(await thread_events(engine, a.thread_id)).count("agent_started") == 1


async def test_isolation_between_users(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    mine = await engine.runner.start_run("alice", "echo", "private")
    await wait_run(engine, "alice", mine.run_id)
    for call in (
        engine.store.get_run("mallory", mine.run_id),
        engine.store.get_thread("mallory", mine.thread_id),
        engine.store.list_messages("mallory", mine.thread_id),
        engine.runner.cancel("mallory", run_id=mine.run_id),
        engine.runner.cancel("mallory", thread_id=mine.thread_id),
        engine.runner.start_run("mallory", "echo", "x", thread_id=mine.thread_id),
    ):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.code == "not_found"
    assert await engine.store.list_threads("mallory") == []
    assert [t.thread_id for t in await engine.store.list_threads("alice")] == [mine.thread_id]


async def test_bad_arguments(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    with pytest.raises(NotFound):
        await engine.runner.start_run("alice", "no-such-agent", "x")
    with pytest.raises(InvalidInput):
        await engine.runner.start_run("alice", "echo", "x", on_active="maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await engine.runner.cancel("alice")


async def test_demo_run_nests_sub_runs_and_answers_with_numbers(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    ticket = await engine.runner.start_run("alice", "demo", "where can we save money?")
    record = await wait_run(engine, "alice", ticket.run_id, within=15)
    events = await thread_events(engine, ticket.thread_id)
    assert record.status is RunStatus.COMPLETED
    subs = {e.run_id for e in events if e.parent_run_id == ticket.run_id}
    assert len(subs) >= 2
    assert "tool_executing" in types_of(events)
    assert all(d["status"] == "success" for d in data_of(events, "tool_completed"))
    assert "$" in events[-1].data["final_response"]
    for sub_id in subs:
        sub = await engine.store.get_run("alice", sub_id)
        assert sub.status is RunStatus.COMPLETED
        assert_status_matches(sub, [e for e in events if e.run_id == sub_id])
