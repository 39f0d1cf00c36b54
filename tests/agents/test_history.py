"""Conversation history (docs/python-api.md, "Conversation history"), on both backends.

Agents written here record the ``ctx.history`` they were given; each test
checks it message by message against what the thread's earlier runs did,
with tool call ids and error texts taken from the runs' own events.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentcast.agents import AgentRegistry, RunContext, ToolError, tool
from agentcast.agents.history import INTERRUPTED_MARKER, turns_that_fit
from agentcast.engine import Engine
from agentcast.events import Event
from agentcast.store.base import RunStatus
from tests.conftest import EngineFactory
from tests.runner.helpers import thread_events, wait_run
from tests.utils import seconds, wait_until

History = tuple[dict[str, Any], ...]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@tool
def lookup(city: str) -> dict[str, int]:
    """A city's temperature."""
    return {"temp": 21 if city == "Paris" else 18}


@tool
def sky(city: str) -> str:
    """A city's sky."""
    return "sunny"


@tool
def broken() -> str:
    """Always fails."""
    raise ValueError("no data today")


@dataclass
class Agents:
    """The test's agents and what they saw."""

    registry: AgentRegistry = field(default_factory=AgentRegistry)
    seen: dict[str, History] = field(default_factory=dict)
    tool_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_agents() -> Agents:
    a = Agents()

    @tool
    async def wait_here() -> str:
        """Waits for the test's gate."""
        a.tool_started.set()
        await a.release.wait()
        return "released"

    async def recorder(ctx: RunContext) -> str:
        a.seen[ctx.message] = ctx.history
        return f"answer to {ctx.message}"

    async def tooler(ctx: RunContext) -> str:
        await ctx.say("Let me look.")
        await ctx.call_tool("lookup", city="Paris")
        with pytest.raises(ToolError):
            await ctx.call_tool("broken")  # no text between: the same group as lookup
        await ctx.say("Checking the sky.")
        await ctx.call_tool("sky", city="Paris")
        return "It is 21 and sunny."

    async def waiter(ctx: RunContext) -> str:
        await ctx.say("Looking. ")
        await ctx.call_tool("lookup", city="Rome")
        await ctx.say("Now waiting")
        await ctx.call_tool("wait_here")  # cancelled here: the call has no answer
        return "never"

    async def failer(ctx: RunContext) -> str:
        await ctx.say("Half an answer")
        raise RuntimeError("boom")

    async def silent_failer(ctx: RunContext) -> str:
        raise RuntimeError("boom")

    async def blocker(ctx: RunContext) -> str:
        await a.release.wait()
        return "first answer"

    async def delegator(ctx: RunContext) -> str:
        a.seen[ctx.message] = ctx.history
        return "delegated: " + await ctx.delegate("recorder", "sub question")

    for spec in (lookup, sky, broken, wait_here):
        a.registry.add_tool(spec)
    for fn in (recorder, tooler, waiter, failer, silent_failer, blocker, delegator):
        a.registry.register(fn, name=fn.__name__, description=fn.__name__)
    return a


async def run(
    engine: Engine, agent: str, message: str, thread: str | None = None, **kw: Any
) -> tuple[str, str]:
    """Start a run of alice's and wait for its end; return ``(thread_id, run_id)``.

    Enqueued: the run before it may be stored as ended a moment before the
    runner frees its slot (a reader sees the commit before its callbacks ran).
    """
    kw.setdefault("on_active", "enqueue")
    ticket = await engine.runner.start_run("alice", agent, message, thread_id=thread, **kw)
    await wait_run(engine, "alice", ticket.run_id)
    return ticket.thread_id, ticket.run_id


def of_run(events: list[Event], run_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.run_id == run_id and e.type == event_type]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None, calls: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    if calls is None:
        return {"role": "assistant", "content": text}
    tool_calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
    ]
    return {"role": "assistant", "content": text, "tool_calls": tool_calls}


def tool_msg(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tooler_turn(events: list[Event], run_id: str, message: str) -> list[dict[str, Any]]:
    """What the ``tooler`` agent's run contributes, ids and error text from its events."""
    calls = of_run(events, run_id, "tool_executing")
    done = of_run(events, run_id, "tool_completed")
    assert [c["tool_name"] for c in calls] == ["lookup", "broken", "sky"]
    assert [d["status"] for d in done] == ["success", "error", "success"]
    ids = [c["tool_call_id"] for c in calls]
    return [
        user(message),
        assistant(
            "Let me look.",
            [(ids[0], "lookup", compact({"city": "Paris"})), (ids[1], "broken", "{}")],
        ),
        tool_msg(ids[0], compact({"temp": 21})),
        tool_msg(ids[1], f"Error: {done[1]['error']}"),
        assistant("Checking the sky.", [(ids[2], "sky", compact({"city": "Paris"}))]),
        tool_msg(ids[2], "sunny"),
        assistant("It is 21 and sunny."),
    ]


async def test_history_holds_user_assistant_and_tool_turns_in_order(
    make_engine: EngineFactory,
) -> None:
    a = make_agents()
    engine = await make_engine(a.registry)
    thread, _ = await run(engine, "recorder", "hello")
    _, tool_run = await run(engine, "tooler", "weather?", thread)
    _, _ = await run(engine, "delegator", "ask a helper", thread)
    await run(engine, "recorder", "thanks", thread)

    events = await thread_events(engine, thread)
    first = [user("hello"), assistant("answer to hello")]
    tools = tooler_turn(events, tool_run, "weather?")
    assert a.seen["hello"] == ()
    assert list(a.seen["ask a helper"]) == first + tools
    assert a.seen["sub question"] == ()  # a sub-run gets no history
    # The delegating run's turn is its message and answer, not its sub-run's turns.
    delegated = [user("ask a helper"), assistant("delegated: answer to sub question")]
    assert list(a.seen["thanks"]) == first + tools + delegated


async def test_interrupted_runs_leave_a_marked_partial_answer_and_no_unanswered_call(
    make_engine: EngineFactory,
) -> None:
    a = make_agents()
    engine = await make_engine(a.registry)
    ticket = await engine.runner.start_run("alice", "waiter", "wait")
    thread = ticket.thread_id
    await wait_until(a.tool_started.is_set, message="the gated tool to start")
    await engine.runner.cancel("alice", run_id=ticket.run_id)
    assert (await wait_run(engine, "alice", ticket.run_id)).status is RunStatus.CANCELLED
    _, failed = await run(engine, "failer", "fail", thread)
    _, quiet = await run(engine, "silent_failer", "fail quietly", thread)
    await run(engine, "recorder", "still there?", thread)

    events = await thread_events(engine, thread)
    assert (await engine.store.get_run("alice", failed)).status is RunStatus.FAILED
    assert (await engine.store.get_run("alice", quiet)).status is RunStatus.FAILED
    calls = of_run(events, ticket.run_id, "tool_executing")
    done = of_run(events, ticket.run_id, "tool_completed")
    assert [d["status"] for d in done] == ["success", "cancelled"]
    lookup_id = calls[0]["tool_call_id"]
    assert list(a.seen["still there?"]) == [
        user("wait"),
        assistant("Looking. ", [(lookup_id, "lookup", compact({"city": "Rome"}))]),
        tool_msg(lookup_id, compact({"temp": 18})),
        # The cancelled call (wait_here) is left out; the text before it stays.
        assistant(f"Now waiting\n\n{INTERRUPTED_MARKER}"),
        user("fail"),
        assistant(f"Half an answer\n\n{INTERRUPTED_MARKER}"),
        user("fail quietly"),
    ]


async def test_an_enqueued_run_sees_the_answer_of_the_run_before_it(
    make_engine: EngineFactory,
) -> None:
    a = make_agents()
    engine = await make_engine(a.registry)
    first = await engine.runner.start_run("alice", "blocker", "first")
    second = await engine.runner.start_run(
        "alice", "recorder", "second", thread_id=first.thread_id, on_active="enqueue"
    )
    a.release.set()
    await wait_run(engine, "alice", second.run_id)
    assert list(a.seen["second"]) == [user("first"), assistant("first answer")]


async def test_history_keeps_the_newest_turns_within_max_turns(
    make_engine: EngineFactory,
) -> None:
    a = make_agents()
    engine = await make_engine(a.registry, history_max_turns=2)
    thread, _ = await run(engine, "recorder", "one")
    for message in ("two", "three", "four"):
        await run(engine, "recorder", message, thread)

    def turn(message: str) -> list[dict[str, Any]]:
        return [user(message), assistant(f"answer to {message}")]

    assert a.seen["one"] == ()
    assert list(a.seen["two"]) == turn("one")
    assert list(a.seen["three"]) == turn("one") + turn("two")
    assert list(a.seen["four"]) == turn("two") + turn("three")


async def test_history_keeps_the_newest_whole_turns_within_max_tokens(
    make_engine: EngineFactory,
) -> None:
    """A budget of 10 tokens is 40 characters; "answer to " adds 10 to each message."""
    a = make_agents()
    engine = await make_engine(a.registry, history_max_tokens=10)
    m1, m2, m3, m4 = "a" * 5, "b" * 5, "c", "d" * 40  # turns of 20, 20, 12, 90 characters
    thread, _ = await run(engine, "recorder", m1)
    for message in (m2, m3, m4, "last"):
        await run(engine, "recorder", message, thread)

    def turn(message: str) -> list[dict[str, Any]]:
        return [user(message), assistant(f"answer to {message}")]

    assert list(a.seen[m3]) == turn(m1) + turn(m2)  # 40 characters: exactly the budget
    assert list(a.seen[m4]) == turn(m2) + turn(m3)  # 52 with m1: the oldest is dropped
    assert a.seen["last"] == ()  # the newest turn alone is over budget: no history


def test_turns_that_fit_counts_the_newest_whole_turns() -> None:
    assert turns_that_fit([10, 10, 10], max_turns=5, max_tokens=5) == 2
    assert turns_that_fit([10, 10, 10], max_turns=1, max_tokens=100) == 1
    assert turns_that_fit([41, 1], max_turns=5, max_tokens=10) == 0
    assert turns_that_fit([], max_turns=5, max_tokens=10) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_history_survives_a_restart(make_engine: EngineFactory) -> None:
    a = make_agents()
    engine = await make_engine(a.registry)
    thread, tool_run = await run(engine, "tooler", "weather?")
    await run(engine, "failer", "fail", thread)
    events = await thread_events(engine, thread)
    data_dir = engine.settings.data_dir
    await engine.shutdown(grace_s=0)

    again = await make_engine(a.registry, data_dir=data_dir)
    await run(again, "recorder", "after the restart", thread)
    assert list(a.seen["after the restart"]) == [
        *tooler_turn(events, tool_run, "weather?"),
        user("fail"),
        assistant(f"Half an answer\n\n{INTERRUPTED_MARKER}"),
    ]


async def test_history_does_not_depend_on_retained_events(make_engine: EngineFactory) -> None:
    a = make_agents()
    engine = await make_engine(
        a.registry, retention_max_events=1, retention_interval_s=seconds(3600)
    )
    assert engine.retention is not None
    thread, tool_run = await run(engine, "tooler", "weather?")
    events = await thread_events(engine, thread)
    await run(engine, "failer", "fail", thread)
    await run(engine, "recorder", "hello", thread)

    result = await engine.retention.sweep_once()
    assert result.trimmed > 0
    info = await engine.log.info(thread)
    assert await engine.log.read(thread, 0, 1000) == await engine.log.read(
        thread, info.first_seq - 1, 1000
    )
    assert info.first_seq > len(events)  # the tool run's events are gone
    await run(engine, "recorder", "and now?", thread)
    assert list(a.seen["and now?"]) == [
        *tooler_turn(events, tool_run, "weather?"),
        user("fail"),
        assistant(f"Half an answer\n\n{INTERRUPTED_MARKER}"),
        user("hello"),
        assistant("answer to hello"),
    ]
