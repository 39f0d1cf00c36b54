"""RunContext and the registry: what an agent can emit, in what order, and how runs end.

Ordering is what a client relies on (docs/architecture.md invariant 3 and "Lessons"):
text coalesced into ``text_delta`` windows must never overtake or lag behind
the agent's other events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from agentcast.agents import (
    AgentRegistry,
    AgentResult,
    AgentSettings,
    FunctionAgent,
    RunContext,
    SubRunFailed,
    result_text,
    tool,
)
from agentcast.agents.context import MAX_PENDING_CHARS
from agentcast.errors import InternalError, InvalidEvent, InvalidTransition, NotFound
from agentcast.events import REDACTED
from tests.utils import MS, SCALE

from .harness import Harness

#: The coalescing window, scaled with the machine like every other time here.
WINDOW_MS = 30 * SCALE


def harness(**settings: Any) -> Harness:
    return Harness(settings=AgentSettings(**{"text_coalesce_ms": WINDOW_MS, **settings}))


def test_properties() -> None:
    h = harness()
    parent = h.context("boss", "question")
    ctx = h.context("helper", "sub-question", parent)
    assert (ctx.run_id, ctx.thread_id, ctx.user_id) == ("run2", "th_test", "alice")
    assert (ctx.agent, ctx.message, ctx.parent_run_id) == ("helper", "sub-question", "run1")
    assert parent.parent_run_id is None
    assert ctx.message_id == "msg_run2"
    assert ctx.settings.text_coalesce_ms == WINDOW_MS
    assert ctx.registry is h.registry
    assert not ctx.closed
    assert "run2" in repr(ctx)


def test_settings_are_validated() -> None:
    defaults = AgentSettings()
    assert (defaults.text_coalesce_ms, defaults.tool_timeout_s, defaults.tool_concurrency) == (
        30,
        60,
        4,
    )
    assert defaults.max_value_bytes == 256 * 1024
    for bad in (
        {"text_coalesce_ms": -1},
        {"tool_timeout_s": 0},
        {"tool_concurrency": 0},
        {"max_value_bytes": 10},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            AgentSettings(**bad)


async def test_think_steps_count_up_unless_given() -> None:
    h = harness()
    ctx = h.context()
    await ctx.think("first")
    await ctx.think("second", progress=0.5)
    await ctx.think("tenth", step=10)
    await ctx.think("eleventh", progress=1)
    assert [e.data for e in h.events] == [
        {"reasoning": "first", "step": 1},
        {"reasoning": "second", "step": 2, "progress": 0.5},
        {"reasoning": "tenth", "step": 10},
        {"reasoning": "eleventh", "step": 11, "progress": 1.0},
    ]
    with pytest.raises(InvalidEvent):
        await ctx.think("too far", progress=1.5)


async def test_progress_and_custom() -> None:
    h = harness(max_value_bytes=100)
    ctx = h.context()
    await ctx.progress(40)
    await ctx.progress(100, "done")
    await ctx.custom("chart", {"points": [1, 2], "auth": {"password": "p"}})
    await ctx.custom("blob", "y" * 500)
    assert [(e.type, e.data) for e in h.events[:3]] == [
        ("progress", {"percentage": 40.0}),
        ("progress", {"percentage": 100.0, "message": "done"}),
        ("custom", {"name": "chart", "value": {"points": [1, 2], "auth": {"password": REDACTED}}}),
    ]
    assert h.events[3].data["value"]["truncated"] is True
    with pytest.raises(InvalidEvent):
        await ctx.progress(101)
    with pytest.raises(InvalidEvent):
        await ctx.custom("", 1)


async def test_says_within_a_window_become_one_text_delta() -> None:
    h = harness()
    ctx = h.context()
    for token in ["Hel", "lo", ", ", "wor", "ld"]:
        await ctx.say(token)
    assert h.events == []  # nothing sent yet: still inside the window
    assert ctx.text == "Hello, world"
    await asyncio.sleep(WINDOW_MS * 3 / 1000)
    assert [(e.type, e.data) for e in h.events] == [
        ("text_delta", {"message_id": "msg_run1", "delta": "Hello, world"}),
    ]
    # The first delta's timer fired once the window elapsed, not per token.
    await ctx.say("!")
    await asyncio.sleep(WINDOW_MS * 3 / 1000)
    assert [e.data["delta"] for e in h.events] == ["Hello, world", "!"]
    await ctx.aclose()


async def test_window_starts_at_the_first_pending_token() -> None:
    h = harness()
    ctx = h.context()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(10):
        await ctx.say("x")
        await asyncio.sleep(5 * MS)  # 50 ms of tokens: about two windows
    await ctx.aclose()
    deltas = [e.data["delta"] for e in h.events]
    assert "".join(deltas) == "x" * 10
    assert 2 <= len(deltas) <= 3
    first = h.events[0]
    assert WINDOW_MS / 1000 <= first.at - start < WINDOW_MS / 1000 + 20 * MS


@pytest.mark.parametrize("what", ["think", "progress", "custom", "call_tool"])
async def test_pending_text_is_flushed_before_any_other_event(what: str) -> None:
    @tool
    def noop() -> None:
        """Do nothing."""

    h = harness(text_coalesce_ms=10_000)  # the timer would never fire in time
    ctx = h.context()
    await ctx.say("before ")
    await ctx.say("it")
    if what == "think":
        await ctx.think("next")
    elif what == "progress":
        await ctx.progress(50)
    elif what == "custom":
        await ctx.custom("x", 1)
    else:
        await ctx.call_tool(noop)
    assert h.events[0].type == "text_delta"
    assert h.events[0].data["delta"] == "before it"
    assert h.types()[1] in {"agent_thinking", "progress", "custom", "tool_executing"}
    await ctx.say("after")
    await ctx.aclose()
    assert h.events[-1].data == {"message_id": "msg_run1", "delta": "after"}


async def test_text_is_flushed_before_a_sub_run_starts() -> None:
    h = harness(text_coalesce_ms=10_000)

    @h.registry.agent(name="helper")
    async def helper(ctx: RunContext) -> str:
        await ctx.say("sub text")
        return "sub answer"

    ctx = h.context("boss")
    await ctx.say("parent text")
    assert await ctx.delegate("helper", "go") == "sub answer"
    await ctx.aclose()
    assert [(e.run_id, e.type) for e in h.events] == [
        ("run1", "text_delta"),
        ("run2", "agent_started"),
        ("run2", "text_delta"),  # flushed by the sub-run's aclose, before its terminal event
        ("run2", "agent_completed"),
    ]
    assert h.events[2].data == {"message_id": "msg_run2", "delta": "sub text"}
    assert h.events[3].parent_run_id == "run1"


async def test_zero_window_sends_every_chunk_at_once() -> None:
    h = harness(text_coalesce_ms=0)
    ctx = h.context()
    await ctx.say("a")
    await ctx.say("")  # nothing to send
    await ctx.say("b")
    assert [e.data["delta"] for e in h.events] == ["a", "b"]


async def test_large_pending_text_is_sent_without_waiting() -> None:
    h = harness(text_coalesce_ms=10_000)
    ctx = h.context()
    await ctx.say("a" * (MAX_PENDING_CHARS - 1))
    assert h.events == []
    await ctx.say("bb")
    assert len(h.events) == 1
    assert len(h.events[0].data["delta"]) == MAX_PENDING_CHARS + 1


async def test_aclose_flushes_stops_the_timer_and_closes() -> None:
    h = harness(text_coalesce_ms=50)
    ctx = h.context()
    await ctx.say("tail")
    await ctx.aclose()
    assert [e.data["delta"] for e in h.events] == ["tail"]
    await ctx.aclose()  # idempotent
    await asyncio.sleep(80 * MS)  # the timer was cancelled: no second delta
    assert len(h.events) == 1
    assert ctx.closed
    with pytest.raises(InvalidTransition):
        await ctx.think("late")
    with pytest.raises(InvalidTransition):
        await ctx.say("late")


async def test_say_during_a_slow_flush_is_not_lost() -> None:
    h = harness(text_coalesce_ms=5)
    h.emit_delay = 20 * MS
    ctx = h.context()
    await ctx.say("one ")
    await asyncio.sleep(10 * MS)  # the timer is now inside its (slow) emit
    await ctx.say("two")
    await ctx.aclose()
    assert [e.data["delta"] for e in h.events] == ["one ", "two"]


async def test_a_failed_timer_flush_keeps_the_text(caplog: pytest.LogCaptureFixture) -> None:
    h = harness(text_coalesce_ms=5)
    h.fail_next["text_delta"] = ConnectionError("log down")
    ctx = h.context()
    with caplog.at_level(logging.WARNING, logger="agentcast.agents.context"):
        await ctx.say("kept")
        await asyncio.sleep(20 * MS)
    assert h.events == []
    assert "sending coalesced text of run1 failed" in caplog.text
    await ctx.think("next")  # retries the text first
    assert [(e.type, e.data.get("delta")) for e in h.events] == [
        ("text_delta", "kept"),
        ("agent_thinking", None),
    ]


async def test_delegate_records_nesting_and_errors() -> None:
    h = harness()

    @h.registry.agent(name="fails")
    async def fails(ctx: RunContext) -> str:
        raise ValueError("bad input in /srv/app/x.py")

    @h.registry.agent(name="boss")
    async def boss(ctx: RunContext) -> str:
        with pytest.raises(NotFound):
            await ctx.delegate("nobody", "hi")
        with pytest.raises(SubRunFailed, match="bad input in <path>"):
            await ctx.delegate("fails", "x")
        return "recovered"

    assert await h.run("boss") == ("recovered", None)
    assert [(e.run_id, e.parent_run_id, e.type) for e in h.events] == [
        ("run1", None, "agent_started"),
        ("run2", "run1", "agent_started"),
        ("run2", "run1", "agent_error"),
        ("run1", None, "agent_completed"),
    ]
    assert h.events[2].data["message"] == "bad input in <path>"
    assert h.delegations == [("run1", "nobody", "hi"), ("run1", "fails", "x")]


async def test_delegate_needs_a_delegate_function() -> None:
    async def emit(event_type: str, data: Any) -> None: ...

    ctx = RunContext(run_id="r", thread_id="t", user_id="u", agent="a", message="m", emit=emit)
    with pytest.raises(InternalError):
        await ctx.delegate("x", "y")
    with pytest.raises(Exception, match="unknown tool 'x'"):
        await ctx.call_tool("x")


# --- result_text ----------------------------------------------------------------


async def test_result_text() -> None:
    h = harness()
    ctx = h.context()
    await ctx.say("streamed ")
    await ctx.say("answer")
    assert result_text("plain", ctx) == ("plain", msgspec.UNSET)
    assert result_text(AgentResult("text", {"n": 1}), ctx) == ("text", {"n": 1})
    assert result_text(AgentResult("text"), ctx) == ("text", msgspec.UNSET)
    assert result_text(None, ctx) == ("streamed answer", msgspec.UNSET)
    with pytest.raises(TypeError, match="returned int"):
        result_text(3, ctx)  # type: ignore[arg-type]
    await ctx.aclose()


async def test_an_agent_returning_none_completes_with_what_it_said() -> None:
    h = harness()

    @h.registry.agent(name="streamer")
    async def streamer(ctx: RunContext) -> None:
        for word in ("a ", "b ", "c"):
            await ctx.say(word)

    assert await h.run("streamer") == ("a b c", None)
    assert h.types() == ["agent_started", "text_delta", "agent_completed"]
    assert h.events[-1].data["final_response"] == "a b c"


# --- the registry ---------------------------------------------------------------


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key


async def answer(ctx: RunContext) -> str:
    """Answers questions.

    More detail that is not part of the listing.
    """
    return "42"


class Greeter:
    name = "greeter"
    description = "Says hello."
    tools = (lookup,)

    async def run(self, ctx: RunContext) -> AgentResult:
        return AgentResult("hello", result={"greeted": ctx.user_id})


def test_register_functions_and_agents() -> None:
    registry = AgentRegistry()
    agent = registry.register(answer, tools=[lookup])
    assert isinstance(agent, FunctionAgent)
    assert (agent.name, agent.description) == ("answer", "Answers questions.")
    registry.register(Greeter())

    @registry.agent(name="custom", description="Made by decorator.")
    async def whatever(ctx: RunContext) -> str:
        return "x"

    assert "answer" in registry
    assert "custom" in registry
    assert "whatever" not in registry
    assert list(registry) == ["answer", "greeter", "custom"]
    assert len(registry) == 3
    assert registry.get("greeter").description == "Says hello."
    assert registry.tool("lookup") is lookup
    assert (
        registry.describe()
        == registry.list()
        == [
            {"name": "answer", "description": "Answers questions.", "tools": [lookup.describe()]},
            {"name": "greeter", "description": "Says hello.", "tools": [lookup.describe()]},
            {"name": "custom", "description": "Made by decorator.", "tools": []},
        ]
    )
    with pytest.raises(NotFound, match="unknown agent 'nope'"):
        registry.get("nope")
    with pytest.raises(NotFound, match="unknown tool 'nope'"):
        registry.tool("nope")


def test_registry_refuses_conflicts_and_bad_agents() -> None:
    registry = AgentRegistry()
    registry.register(answer)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(answer)

    @tool(name="lookup")
    def other_lookup(key: str) -> str:
        return key

    registry.add_tool(lookup)
    registry.add_tool(lookup)  # the same tool again is fine
    with pytest.raises(ValueError, match="different tool"):
        registry.add_tool(other_lookup)

    def not_async(ctx: RunContext) -> str:
        return ""

    with pytest.raises(TypeError):
        registry.register(not_async)  # type: ignore[arg-type]


def test_merge() -> None:
    base = AgentRegistry()
    base.register(answer, tools=[lookup])
    extra = AgentRegistry()
    extra.register(Greeter())
    assert base.merge(extra) is base
    assert list(base) == ["answer", "greeter"]
    clash = AgentRegistry()
    clash.register(Greeter())
    with pytest.raises(ValueError, match="already registered"):
        base.merge(clash)
    base.merge(clash, replace=True)
    assert base.get("greeter") is clash.get("greeter")
    assert list(extra) == ["greeter"]  # the source is unchanged


async def test_structured_result_reaches_agent_completed() -> None:
    h = harness()
    h.registry.register(Greeter())
    assert await h.run("greeter") == ("hello", None)
    assert h.events[-1].data == {
        "status": "success",
        "final_response": "hello",
        "duration_ms": h.events[-1].data["duration_ms"],
        "result": {"greeted": "alice"},
    }
