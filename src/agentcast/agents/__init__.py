"""The agent-authoring API: agents, tools, the run context, the registry.

Write an agent as ``async def my_agent(ctx: RunContext) -> str``; give it
tools with ``@tool``; register both in an :class:`AgentRegistry`. Everything
the user sees — thinking, tool calls, streamed text — is emitted through the
context, which the runner creates per run (docs/architecture.md, "One direction of flow").
"""

from __future__ import annotations

from .builtin import builtin_registry
from .context import RunContext
from .exceptions import SubRunCancelled, SubRunFailed, ToolError, ToolTimeout
from .registry import Agent, AgentRegistry, AgentResult, FunctionAgent, result_text
from .sanitize import sanitize_error
from .settings import AgentSettings
from .tools import ToolDispatcher, ToolSpec, tool

__all__ = [
    "Agent",
    "AgentRegistry",
    "AgentResult",
    "AgentSettings",
    "FunctionAgent",
    "RunContext",
    "SubRunCancelled",
    "SubRunFailed",
    "ToolDispatcher",
    "ToolError",
    "ToolSpec",
    "ToolTimeout",
    "builtin_registry",
    "result_text",
    "sanitize_error",
    "tool",
]
