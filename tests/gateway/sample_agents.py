"""Agents loaded by ``module:attr`` in the mount tests (``settings.agents``)."""

from __future__ import annotations

from agentcast.agents import AgentRegistry, RunContext


async def shout(ctx: RunContext) -> str:
    """Replies with the message in capitals."""
    return ctx.message.upper()


registry = AgentRegistry()


@registry.agent(name="whisper")
async def whisper(ctx: RunContext) -> str:
    """Replies with the message in lower case."""
    return ctx.message.lower()


not_an_agent = 42
