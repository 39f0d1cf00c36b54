"""Each way a run's story used to break, with the exact outcome that now holds.

The randomised tests (test_story_property.py) cover the combinations; these
pin down one cause each, ordered with gates rather than sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from agentcast.agents import AgentRegistry, RunContext, SubRunCancelled, tool
from agentcast.engine import Engine
from agentcast.errors import AppendRejected, LimitExceeded
from agentcast.events import TERMINAL_TYPES
from agentcast.log.base import EventDraft, StoredEvent
from agentcast.store.base import RunStatus
from tests.conftest import EngineFactory
from tests.runner.helpers import test_registry, thread_events, types_of, wait_run
from tests.runner.story import check_story
from tests.utils import seconds, wait_until, within

# --- 0. the thread takes its next run at once -----------------------------------------


def _outcome_registry() -> AgentRegistry:
    registry = test_registry()

    async def hang(ctx: RunContext) -> str:
        await asyncio.sleep(3600)
        return "never"

    registry.register(hang, name="hang", description="runs until stopped")
    return registry


@pytest.mark.parametrize("outcome", ["completed", "cancelled", "failed", "timed_out"])
async def test_a_follow_up_from_the_terminal_event_handler_is_accepted_every_time(
    make_engine: EngineFactory, outcome: str
) -> None:
    """100 of 100: the next start, sent as the terminal event arrives, is never run_active."""
    engine = await make_engine(
        _outcome_registry(), run_timeout_s=seconds(0.02), max_runs_per_user=1,
        max_queued_per_user=0,
    )  # fmt: skip
    agent = {"completed": "echo", "cancelled": "hang", "failed": "failing", "timed_out": "hang"}
    ticket = await engine.runner.start_run("alice", agent[outcome], "go")
    follower = await engine.bridge.follow(ticket.thread_id, 0)
    other = await engine.store.create_thread("alice", title="elsewhere")
    latest, accepted = ticket.run_id, 0
    try:
        while accepted < 100:
            batch = await within(seconds(10), follower.next_batch(), f"run {latest}")
            for event in batch:
                if event.run_id != latest:
                    continue
                if event.type == "agent_started" and outcome == "cancelled":
                    await engine.runner.cancel("alice", run_id=latest)
                if event.type in TERMINAL_TYPES:
                    # The handler of the terminal event: the same thread at once,
                    # then the user's only running slot on another thread.
                    nxt = await engine.runner.start_run(
                        "alice", agent[outcome], "go", thread_id=ticket.thread_id
                    )
                    accepted += 1
                    latest = nxt.run_id
    finally:
        await follower.aclose()
    await engine.runner.cancel("alice", run_id=latest)
    await wait_run(engine, "alice", latest)
    # The per-user running limit (1, nothing may wait) is free as soon as it ended.
    elsewhere = await engine.runner.start_run("alice", "echo", "x", thread_id=other.thread_id)
    await wait_run(engine, "alice", elsewhere.run_id)
    await check_story(engine, "alice", ticket.thread_id)


# --- 1, 2. tool calls and text are never cut in half ------------------------------------


async def test_a_cancel_during_tool_executing_still_closes_the_call(
    make_engine: EngineFactory,
) -> None:
    registry = test_registry()
    gate = _AppendGate()
    engine = await make_engine(registry)
    gate.install(engine, "tool_executing")
    ticket = await engine.runner.start_run("alice", "hanger", "x")
    await within(seconds(5), gate.held.wait(), "tool_executing to reach the log")
    await engine.runner.cancel("alice", run_id=ticket.run_id)
    gate.release()
    await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == [
        "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_cancelled",
    ]  # fmt: skip
    assert events[3].data["status"] == "cancelled"


async def test_a_cancel_during_a_text_flush_sends_the_text_once(
    make_engine: EngineFactory,
) -> None:
    registry = test_registry()

    async def talker(ctx: RunContext) -> str:
        await ctx.say("hello ")
        await ctx.say("world")
        await ctx.think("thinking flushes the text first")
        await asyncio.sleep(3600)
        return "never"

    registry.register(talker, name="talker", description="says, then thinks")
    engine = await make_engine(registry, text_coalesce_ms=60_000)
    gate = _AppendGate()
    gate.install(engine, "text_delta")
    ticket = await engine.runner.start_run("alice", "talker", "x")
    await within(seconds(5), gate.held.wait(), "the text to reach the log")
    await engine.runner.cancel("alice", run_id=ticket.run_id)
    gate.release()
    await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "text_delta", "agent_cancelled"]
    assert events[1].data["delta"] == "hello world"


@pytest.mark.parametrize("release_first", [False, True])
async def test_a_cancel_while_the_terminal_event_is_written_answers_before_it(
    make_engine: EngineFactory, release_first: bool
) -> None:
    """``running`` means the terminal event is still to come, seen after the answer."""
    engine = await make_engine()
    gate = _AppendGate()
    gate.install(engine, "agent_completed")
    committed: list[str] = []
    engine.log.add_commit_listener(
        lambda events: committed.extend(e.type for e in events if e.type in TERMINAL_TYPES)
    )
    ticket = await engine.runner.start_run("alice", "echo", "x")
    await within(seconds(5), gate.held.wait(), "agent_completed to reach the log")
    if release_first:
        gate.release()  # the commit races the cancel's own awaits
    result = await engine.runner.cancel("alice", run_id=ticket.run_id)
    seen_at_answer = list(committed)
    gate.release()
    await wait_run(engine, "alice", ticket.run_id)
    if result.status in (RunStatus.RUNNING, RunStatus.QUEUED):
        assert seen_at_answer == []  # the terminal event came after the answer
    else:
        assert result.status is RunStatus.COMPLETED
        assert seen_at_answer == ["agent_completed"]
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "agent_thinking", "agent_completed"]


# --- 3. a cancel while winding up after an error --------------------------------------


async def test_a_cancel_while_winding_up_after_an_error_keeps_the_terminal_event(
    make_engine: EngineFactory,
) -> None:
    registry = test_registry()
    winding = asyncio.Event()
    go_on = asyncio.Event()

    running_tool = asyncio.Event()

    @tool
    async def reluctant() -> str:
        """Ends slowly when cancelled."""
        try:
            running_tool.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            winding.set()
            await go_on.wait()
            raise
        return "never"

    registry.add_tool(reluctant)

    async def fails_with_a_tool_running(ctx: RunContext) -> str:
        running = asyncio.create_task(ctx.call_tool("reluctant"))
        running.add_done_callback(lambda t: t.cancelled() or t.exception())
        await running_tool.wait()
        raise RuntimeError("failed with a tool still running")

    registry.register(fails_with_a_tool_running, name="fails_wt", description="fails")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run("alice", "fails_wt", "x")
    await within(seconds(5), winding.wait(), "the run to wind up")
    await engine.runner.cancel("alice", run_id=ticket.run_id)  # lands during ctx.aclose()
    go_on.set()
    record = await wait_run(engine, "alice", ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == [
        "agent_started", "tool_executing", "tool_completed", "agent_error",
    ]  # fmt: skip
    assert events[2].data["status"] == "cancelled"
    assert events[3].data["error_type"] == "RuntimeError"
    assert record.status is RunStatus.FAILED


# --- 4. concurrent sub-runs -------------------------------------------------------------


def _sub_registry() -> AgentRegistry:
    registry = test_registry()

    orphan_running = asyncio.Event()

    async def marked(ctx: RunContext) -> str:
        orphan_running.set()
        await asyncio.sleep(3600)
        return "never"

    async def orphaner(ctx: RunContext) -> str:
        task = asyncio.create_task(ctx.delegate("marked", "left behind"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await orphan_running.wait()
        return "returned first"

    async def gatherer(ctx: RunContext) -> str:
        await asyncio.gather(ctx.delegate("hanger", "a"), ctx.delegate("hanger", "b"))
        return "never"

    async def tolerant(ctx: RunContext) -> str:
        try:
            return await ctx.delegate("hanger", "go")
        except SubRunCancelled as exc:
            return f"went on without it ({exc.reason})"

    registry.register(marked, name="marked", description="runs until stopped")
    registry.register(orphaner, name="orphaner", description="leaves a sub-run running")
    registry.register(gatherer, name="gatherer", description="two sub-runs at once")
    registry.register(tolerant, name="tolerant", description="survives a sub-run's cancel")
    return registry


async def _sub_runs(engine: Engine, thread_id: str, parent: str, count: int) -> list[str]:
    async def started() -> bool:
        stored = await engine.bridge.read(thread_id, 0, 10_000)
        return (
            sum(e.parent_run_id == parent and e.type == "tool_executing" for e in stored) >= count
        )

    await wait_until(started, message=f"{count} sub-runs to call their tools")
    stored = await engine.bridge.read(thread_id, 0, 10_000)
    return [e.run_id for e in stored if e.parent_run_id == parent and e.type == "agent_started"]


async def test_a_sub_run_left_behind_ends_before_its_parent(make_engine: EngineFactory) -> None:
    engine = await make_engine(_sub_registry())
    ticket = await engine.runner.start_run("alice", "orphaner", "x")
    record = await wait_run(engine, "alice", ticket.run_id)
    events = await check_story(engine, "alice", ticket.thread_id)
    sub = [e for e in events if e.parent_run_id == ticket.run_id]
    assert sub[-1].type == "agent_cancelled"
    assert sub[-1].data["reason"] == "parent run ended: it returned"
    assert events[-1].type == "agent_completed"
    assert record.status is RunStatus.COMPLETED


async def test_cancelling_a_parent_ends_its_gathered_sub_runs_first(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(_sub_registry())
    ticket = await engine.runner.start_run("alice", "gatherer", "x")
    subs = await _sub_runs(engine, ticket.thread_id, ticket.run_id, 2)
    await engine.runner.cancel("alice", run_id=ticket.run_id)
    await wait_run(engine, "alice", ticket.run_id)
    events = await check_story(engine, "alice", ticket.thread_id)
    ends = [(e.run_id, e.type) for e in events if e.type in TERMINAL_TYPES]
    assert sorted(ends[:2]) == sorted((s, "agent_cancelled") for s in subs)
    assert ends[2] == (ticket.run_id, "agent_cancelled")


@pytest.mark.parametrize("agent", ["tolerant", "parent"])
async def test_cancelling_a_sub_run_by_its_id_ends_that_sub_run_only(
    make_engine: EngineFactory, agent: str
) -> None:
    engine = await make_engine(_sub_registry())
    ticket = await engine.runner.start_run("alice", agent, "x")
    (sub,) = await _sub_runs(engine, ticket.thread_id, ticket.run_id, 1)
    result = await engine.runner.cancel("alice", run_id=sub)
    assert result.status is RunStatus.RUNNING
    record = await wait_run(engine, "alice", ticket.run_id)
    events = await check_story(engine, "alice", ticket.thread_id)
    assert [e.type for e in events if e.run_id == sub][-1] == "agent_cancelled"
    assert (await engine.store.get_run("alice", sub)).status is RunStatus.CANCELLED
    if agent == "tolerant":  # handled: the parent goes on and completes
        assert events[-1].data["final_response"] == "went on without it (cancelled by user)"
        assert record.status is RunStatus.COMPLETED
    else:  # unhandled: the parent ends agent_error
        assert events[-1].type == "agent_error"
        assert events[-1].data["error_type"] == "SubRunCancelled"


# --- 5. admission is per user -------------------------------------------------------------


async def test_one_users_slow_admission_does_not_hold_back_another(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    blocked = asyncio.Event()
    release = asyncio.Event()
    original = engine.store.create_thread

    async def slow_create_thread(user_id: str, title: str = "") -> Any:
        if user_id == "slow":
            blocked.set()
            await release.wait()
        return await original(user_id, title=title)

    engine.store.create_thread = slow_create_thread  # type: ignore[method-assign]
    stuck = asyncio.create_task(engine.runner.start_run("slow", "echo", "x"))
    await within(seconds(5), blocked.wait(), "the slow admission")
    other = await within(seconds(5), engine.runner.start_run("bob", "echo", "y"), "bob's start")
    await engine.runner.cancel("bob", run_id=other.run_id)
    release.set()
    await wait_run(engine, "slow", (await stuck).run_id)


async def test_a_queued_cancel_during_a_log_outage_blocks_no_one(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_runs_per_user=1, shutdown_grace_s=0)
    running = await engine.runner.start_run("alice", "countdown", "1000 50")
    queued = await engine.runner.start_run("alice", "echo", "waits")
    await wait_until(lambda: engine.runner.running_count == 1)
    outage = _AppendGate()
    outage.install(engine, None)  # every append waits: the log is down
    result = await within(
        seconds(2), engine.runner.cancel("alice", run_id=queued.run_id), "the queued cancel"
    )
    assert result.status is RunStatus.QUEUED
    await within(seconds(2), engine.runner.start_run("bob", "echo", "z"), "bob's start")
    outage.release()
    await wait_run(engine, "alice", queued.run_id)
    await engine.runner.cancel("alice", run_id=running.run_id)
    await wait_run(engine, "alice", running.run_id)
    events = await thread_events(engine, queued.thread_id)
    assert types_of(events) == ["agent_started", "agent_cancelled"]


async def test_shutdown_during_a_log_outage_ends_within_its_deadline(
    make_engine: EngineFactory,
) -> None:
    """SIGTERM while the log is down: bounded, and no emit is left waiting silently."""
    engine = await make_engine(
        max_runs_per_user=1, shutdown_grace_s=0, append_timeout_s=seconds(0.2)
    )
    running = await engine.runner.start_run("alice", "countdown", "1000 50")
    queued = await engine.runner.start_run("alice", "echo", "waits")
    await wait_until(lambda: engine.runner.running_count == 1)
    outage = _AppendGate()
    outage.install(engine, None)
    await engine.runner.cancel("alice", run_id=queued.run_id)
    # Runs get MIN_CANCEL_WAIT_S (5 s) to write their terminal events, then the
    # bridge fails what it could not append: well within 10 s in all.
    await within(seconds(10), engine.shutdown(grace_s=0), "shutdown during an outage")
    outage.release()
    assert not engine.bridge.accepting_runs
    # What could not be written is left to crash recovery at the next start
    # (the runs are still "running"/"queued" in the store), never lost silently.
    assert running.run_id in {r.run_id for r in await _active(engine)}


async def test_interrupt_checks_limits_before_cancelling(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_runs_per_user=1, max_queued_per_user=1)
    first = await engine.runner.start_run("alice", "countdown", "1000 50")

    async def first_running() -> bool:
        record = await engine.store.get_run("alice", first.run_id)
        return record.status is RunStatus.RUNNING

    await wait_until(first_running, message="the first run to be running")
    waiting = await engine.runner.start_run("alice", "echo", "elsewhere")  # the user's one queued
    with pytest.raises(LimitExceeded):
        await engine.runner.start_run(
            "alice", "echo", "x", thread_id=first.thread_id, on_active="interrupt"
        )
    assert (await engine.store.get_run("alice", first.run_id)).status is RunStatus.RUNNING
    # Replacing the thread's own queued run frees the place it needs: accepted.
    await engine.runner.cancel("alice", run_id=waiting.run_id)
    behind = await engine.runner.start_run(
        "alice", "echo", "behind", thread_id=first.thread_id, on_active="enqueue"
    )
    again = await engine.runner.start_run(
        "alice", "echo", "now", thread_id=first.thread_id, on_active="interrupt"
    )
    for t in (first, behind, again):
        await wait_run(engine, "alice", t.run_id)
    events = await check_story(engine, "alice", first.thread_id)
    assert [(e.run_id, e.type) for e in events if e.type in TERMINAL_TYPES] == [
        (behind.run_id, "agent_cancelled"),
        (first.run_id, "agent_cancelled"),
        (again.run_id, "agent_completed"),
    ]


# --- 6. a permanent refusal fails one emit ------------------------------------------------


async def test_an_event_the_log_refuses_fails_only_its_own_run(make_engine: EngineFactory) -> None:
    registry = test_registry()

    async def thinker(ctx: RunContext) -> str:
        await ctx.think(f"thinking about {ctx.message}")
        return ctx.message

    registry.register(thinker, name="thinker", description="one thought")
    engine = await make_engine(registry)
    inner = engine.bridge.log
    refused: list[str] = []

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
            for draft in drafts:
                if draft.type == "agent_thinking" and b"poison" in draft.data:
                    refused.append(draft.event_id)
                    raise AppendRejected("a projector bug (injected)")
            return list(await inner.append(drafts))

    engine.bridge.log = Refusing()  # type: ignore[assignment]
    tickets = [
        await engine.runner.start_run(f"user{i}", "thinker", "poison" if i == 3 else f"m{i}")
        for i in range(8)
    ]
    for i, ticket in enumerate(tickets):
        record = await wait_run(engine, f"user{i}", ticket.run_id)
        events = await check_story(engine, f"user{i}", ticket.thread_id)
        if i == 3:
            assert types_of(events) == ["agent_started", "agent_error"]
            assert events[-1].data["error_type"] == "AppendRejected"
        else:
            assert types_of(events) == ["agent_started", "agent_thinking", "agent_completed"]
            assert record.status is RunStatus.COMPLETED
    assert len(refused) >= 1
    assert engine.bridge.accepting_runs


# --- 13. agent_started and sub-run rows survive a cancel ---------------------------------


async def test_a_cancel_while_agent_started_waits_for_room_keeps_it(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(emit_buffer=1)
    gate = _AppendGate()
    gate.install(engine, None)
    held = await engine.runner.start_run("bob", "echo", "its append is held")
    await within(seconds(5), gate.held.wait(), "the first append")
    filler = await engine.runner.start_run("carol", "echo", "fills the buffer")
    # One event in flight (held) and one queued: the buffer of one is full.
    await wait_until(lambda: engine.bridge.buffered == 2, message="the emit buffer to fill")
    ticket = await engine.runner.start_run("alice", "echo", "x")
    await wait_until(lambda: engine.runner.running_count == 3, message="alice's run to start")
    await engine.runner.cancel("alice", run_id=ticket.run_id)  # while it waits for room
    gate.release()
    for user, t in (("alice", ticket), ("bob", held), ("carol", filler)):
        await wait_run(engine, user, t.run_id)
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "agent_cancelled"]


@pytest.mark.parametrize("when", ["while_written", "as_it_is_written"])
async def test_a_parent_cancelled_while_its_sub_run_row_is_written_ends_the_sub_run(
    make_engine: EngineFactory, when: str
) -> None:
    """Also when the cancel and the row's completion land in one loop iteration.

    Then the parent's task wakes (cancelled) before the row's done-callbacks
    run: it must still run the sub-run it created, never leave it registered
    and unexecuted (its parent would wait for it forever).
    """
    engine = await make_engine(test_registry())
    writing = asyncio.Event()
    release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    original = engine.store.create_run

    async def slow_create_run(run: Any) -> Any:
        if run.parent_run_id is not None:
            writing.set()
            await release
        return await original(run)

    engine.store.create_run = slow_create_run  # type: ignore[method-assign]
    ticket = await engine.runner.start_run("alice", "parent", "x")
    await within(seconds(5), writing.wait(), "the sub-run's row")
    if when == "as_it_is_written":
        release.set_result(None)
        await engine.runner.cancel("alice", run_id=ticket.run_id)
    else:
        await engine.runner.cancel("alice", run_id=ticket.run_id)
        release.set_result(None)
    await wait_run(engine, "alice", ticket.run_id)
    events = await check_story(engine, "alice", ticket.thread_id)
    sub = [e for e in events if e.parent_run_id == ticket.run_id]
    assert [e.type for e in sub] == ["agent_started", "agent_cancelled"]
    assert (await engine.store.get_run("alice", sub[0].run_id)).status is RunStatus.CANCELLED
    assert await engine.store.active_runs() == []


async def _active(engine: Engine) -> list[Any]:
    """The runs the store still has active (read after the engine stopped)."""
    if engine.db is not None:
        await engine.db.open()
        await engine.store.open()
        try:
            return list(await engine.store.active_runs())
        finally:
            await engine.store.close()
            await engine.db.close()
    return list(await engine.store.active_runs())


# --- gates ----------------------------------------------------------------------------------


class _AppendGate:
    """Holds appends (of one event type, or all) until released: the commit, gated."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self._open = asyncio.Event()

    def install(self, engine: Engine, event_type: str | None) -> None:
        inner = engine.bridge.log
        gate = self

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
                if not drafts[0].thread_id.startswith("__") and (
                    event_type is None or any(d.type == event_type for d in drafts)
                ):
                    gate.held.set()
                    await gate._open.wait()
                return list(await inner.append(drafts))

        engine.bridge.log = Gated()  # type: ignore[assignment]

    def release(self) -> None:
        self._open.set()
