"""The bench agent: events on an open-loop schedule that carry their own due time.

``python -m bench`` serves this module with ``--agents bench.agents:registry``.
A run's message is a :class:`Schedule` (JSON): slot ``i`` is *due* at the
absolute wall-clock time ``t0 + i * interval`` and the event emitted for it
carries that time. The agent sleeps until each due time and never waits for a
client, so a server that falls behind cannot hide its lag by slowing the
producer down (no coordinated omission): the load generator measures latency
as *receipt time - due time*, which includes every queue between the agent and
the socket — the agent's own emit waiting on the log included.

Most slots are one ``custom`` event ``{"due": …, "i": …}``. With
``big_every = k`` every k-th slot is a tool call instead (``tool_executing``
whose parameters carry ``due``, then ``tool_completed`` whose results carry
``due`` and ``big_bytes`` of payload): the mixed-size workload W5.

The same schedule drives ``bench/baseline_server.py``, so both servers emit the
same frames at the same instants.
"""

from __future__ import annotations

from typing import Any

from bench.schedule import AGENT_NAME, BIG_TOOL_NAME, Schedule

from agentcast.agents import AgentRegistry, RunContext, tool

__all__ = ["bench", "bench_blob", "registry"]


@tool(name=BIG_TOOL_NAME)
async def bench_blob(due: float, size: int) -> dict[str, Any]:
    """Return ``size`` bytes of payload with the slot's due time (a big tool result).

    Args:
        due: The slot's due time, echoed so the result's latency can be measured.
        size: Payload bytes.
    """
    return {"due": due, "blob": "x" * size}


async def bench(ctx: RunContext) -> str:
    """Emit one event per slot of the schedule in the message, each at its due time."""
    schedule = Schedule.decode(ctx.message)
    async for i, due in schedule.slots():
        if schedule.is_big(i):
            await ctx.call_tool(bench_blob, due=due, size=schedule.big_bytes)
        else:
            await ctx.custom("bench", {"due": due, "i": i})
    return f"{schedule.count} slots"


#: Served by ``agentcast serve --agents bench.agents:registry``.
registry = AgentRegistry()
registry.register(bench, name=AGENT_NAME, tools=[bench_blob])
