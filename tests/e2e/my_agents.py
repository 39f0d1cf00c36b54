"""A user's own agent with a tool.

Served by ``agentcast serve --agents agentcast.agents.builtin:registry --agents
tests.e2e.my_agents:registry`` (naming the built-ins keeps them beside these).
"""

from __future__ import annotations

from agentcast.agents import AgentRegistry, RunContext, tool

__all__ = ["registry", "word_count", "wordcount"]

registry = AgentRegistry()


@tool
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: The text to count.
    """
    return len(text.split())


@registry.agent(name="wordcount", tools=[word_count])
async def wordcount(ctx: RunContext) -> str:
    """Counts the words of your message with a tool."""
    await ctx.think("Counting words with a tool.")
    count = await ctx.call_tool("word_count", text=ctx.message)
    return f"{count} words"
