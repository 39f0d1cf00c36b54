"""A run never starts whose ``agent_started`` would be refused, and never ends without a story.

The run's input travels in its ``agent_started``; an input too large for
``max_event_bytes`` is refused before the run exists (admission, or the
parent's ``delegate``), so a run can never end without its start. An
exception class whose name is longer than an event name may be still ends the
run with a valid ``agent_error``.
"""

from __future__ import annotations

import pytest

from agentcast.agents import AgentRegistry, RunContext, builtin_registry
from agentcast.errors import EventTooLarge, InvalidInput
from agentcast.store.base import RunStatus
from tests.conftest import EngineFactory
from tests.runner.helpers import data_of, thread_events, types_of, wait_run

LIMIT = 16 * 1024


async def test_an_input_too_large_for_agent_started_is_refused_at_admission(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_event_bytes=LIMIT, max_value_bytes=1024)
    with pytest.raises(InvalidInput, match="max_event_bytes"):
        await engine.runner.start_run("alice", "echo", "x" * LIMIT)
    assert await engine.store.list_threads("alice") == []  # nothing was created
    ticket = await engine.runner.start_run("alice", "echo", "fits")  # others start as before
    assert (await wait_run(engine, "alice", ticket.run_id)).status is RunStatus.COMPLETED


async def test_a_sub_run_input_too_large_is_refused_to_the_parent(
    make_engine: EngineFactory,
) -> None:
    refused: list[str] = []

    async def parent(ctx: RunContext) -> str:
        try:
            await ctx.delegate("echo", "y" * LIMIT)
        except EventTooLarge as exc:
            refused.append(str(exc))
        return await ctx.delegate("echo", "small")

    registry = builtin_registry().merge(AgentRegistry())
    registry.register(parent, name="parent")
    engine = await make_engine(registry, max_event_bytes=LIMIT, max_value_bytes=1024)
    ticket = await engine.runner.start_run("alice", "parent", "go")
    assert (await wait_run(engine, "alice", ticket.run_id)).status is RunStatus.COMPLETED
    assert len(refused) == 1
    assert "max_event_bytes" in refused[0]
    events = await thread_events(engine, ticket.thread_id)  # contiguous, whole lifecycles
    starts = data_of(events, "agent_started")
    assert [d["message"] for d in starts] == ["go", "small"]  # no sub-run for the refused one


async def test_an_exception_with_a_very_long_name_still_ends_the_run(
    make_engine: EngineFactory,
) -> None:
    long_error = type("E" * 300, (RuntimeError,), {})

    async def failing(ctx: RunContext) -> str:
        raise long_error("boom")

    registry = AgentRegistry()
    registry.register(failing, name="failing")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run("alice", "failing", "go")
    assert (await wait_run(engine, "alice", ticket.run_id)).status is RunStatus.FAILED
    events = await thread_events(engine, ticket.thread_id)
    assert types_of(events) == ["agent_started", "agent_error"]
    assert data_of(events, "agent_error")[0]["error_type"] == "E" * 256
