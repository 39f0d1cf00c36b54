"""Agents and helpers for runner tests."""

from __future__ import annotations

import asyncio
from typing import Any

from agentcast.agents import AgentRegistry, RunContext, builtin_registry, tool
from agentcast.engine import Engine
from agentcast.events import Event
from agentcast.store.base import RunRecord, RunStatus
from tests.invariants import assert_contiguous, assert_run_lifecycles, decode_all
from tests.utils import wait_until


@tool
async def slow_tool(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "slept"


async def failing(ctx: RunContext) -> str:
    await ctx.think("about to fail")
    raise RuntimeError("boom in /home/alice/secret_project/agent.py with api_key=sk-123456")


async def hanging_tool_agent(ctx: RunContext) -> str:
    await ctx.think("calling a slow tool")
    return str(await ctx.call_tool("slow_tool", seconds=30))


async def parent_of_slow(ctx: RunContext) -> str:
    await ctx.think("delegating")
    return await ctx.delegate("hanger", "go")


async def stubborn(ctx: RunContext) -> str:
    """Swallows its cancellation: still ends cancelled."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "ignored the cancel"
    return "slept"


def test_registry() -> AgentRegistry:
    """The built-in agents plus misbehaving ones."""
    registry = builtin_registry()
    registry.add_tool(slow_tool)
    registry.register(failing, name="failing", description="raises")
    registry.register(hanging_tool_agent, name="hanger", description="calls a 30 s tool")
    registry.register(parent_of_slow, name="parent", description="delegates to hanger")
    registry.register(stubborn, name="stubborn", description="ignores cancellation")
    return registry


test_registry.__test__ = False  # type: ignore[attr-defined]


async def thread_events(engine: Engine, thread_id: str) -> list[Event]:
    """Every event of a thread, checked for contiguity and lifecycles."""
    stored = await engine.bridge.read(thread_id, 0, 100_000)
    events = decode_all(stored)
    assert_contiguous(events)
    assert_run_lifecycles(events)
    return events


async def wait_run(engine: Engine, user: str, run_id: str, within: float = 10.0) -> RunRecord:
    """Wait until the run's stored status is final."""
    final = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    holder: dict[str, RunRecord] = {}

    async def done() -> bool:
        holder["r"] = await engine.store.get_run(user, run_id)
        return holder["r"].status in final

    await wait_until(done, within=within, message=f"run {run_id} to end")
    return holder["r"]


def types_of(events: list[Event], run_id: str | None = None) -> list[str]:
    """The event types, optionally of one run."""
    return [e.type for e in events if run_id is None or e.run_id == run_id]


def data_of(events: list[Event], event_type: str) -> list[dict[str, Any]]:
    """The payloads of every event of a type."""
    return [e.data for e in events if e.type == event_type]
