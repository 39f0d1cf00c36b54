"""``echo``: the smallest complete run, for tests and for checking a deployment.

Exactly ``agent_started`` (runner), one ``agent_thinking`` (here), and
``agent_completed`` (runner) whose ``final_response`` is the message
(docs/protocol.md, "Built-in agents").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import RunContext
    from ..registry import AgentRegistry

__all__ = ["echo", "register"]


async def echo(ctx: RunContext) -> str:
    """Replies with your message: one thinking step, then the message itself."""
    await ctx.think(f"Echoing {len(ctx.message)} characters.", progress=1.0)
    return ctx.message


def register(registry: AgentRegistry) -> None:
    """Add ``echo`` to ``registry``."""
    registry.register(echo, name="echo")
