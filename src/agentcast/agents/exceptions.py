"""Errors raised to agent code by the agent API.

::

    AgentcastError (agentcast.errors)
    ├── ToolError        a tool call ended with status "error" (or "timeout")
    │   └── ToolTimeout  a tool call ended with status "timeout"
    ├── SubRunFailed     a delegated sub-run ended with agent_error
    └── SubRunCancelled  a delegated sub-run was cancelled on its own (by its id)

Their messages are already sanitised (:func:`agentcast.agents.sanitize_error`),
so an agent may show them to the user or feed them back to a model. The
original exception of a failed tool is kept as ``__cause__`` for agent code;
it is never sent to clients.

``ToolTimeout`` deliberately does *not* subclass :class:`TimeoutError`: a
runner that enforces the run timeout with ``asyncio.timeout`` catches
``TimeoutError``, and a tool's timeout escaping the agent must not be mistaken
for the run's own.
"""

from __future__ import annotations

from ..errors import AgentcastError

__all__ = ["SubRunCancelled", "SubRunFailed", "ToolError", "ToolTimeout"]


class ToolError(AgentcastError):
    """A tool call failed; the matching ``tool_completed`` is already emitted.

    Args:
        message: The sanitised error, the same text as ``tool_completed.error``.
        tool_name: The tool that was called.
        tool_call_id: The id shared by its ``tool_executing``/``tool_completed``.
    """

    def __init__(self, message: str, *, tool_name: str, tool_call_id: str) -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id


class ToolTimeout(ToolError):
    """A tool call exceeded its time limit (``tool_completed`` status ``timeout``)."""


class SubRunFailed(AgentcastError):
    """A sub-run started with ``ctx.delegate`` ended with ``agent_error``.

    Raised by the runner's delegate function. The sub-run's own terminal event
    is already emitted; the parent decides whether to recover or fail too.

    Args:
        message: The sub-run's sanitised error message.
        agent: The delegated agent's name.
        run_id: The sub-run's id.
        error_type: The sub-run's ``agent_error.error_type``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        agent: str | None = None,
        run_id: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message or "the sub-run failed")
        self.agent = agent
        self.run_id = run_id
        self.error_type = error_type


class SubRunCancelled(AgentcastError):
    """A delegated sub-run was cancelled by its own id while its parent went on.

    Raised by ``ctx.delegate``. The sub-run's ``agent_cancelled`` is already
    emitted; the parent may handle this (try another way, answer without
    it) or let it escape, and then the parent ends with ``agent_error``.
    A cancellation of the parent itself is never this: it cancels the
    parent's task (``CancelledError``) after ending the sub-runs.

    Args:
        message: What happened, for logs and the parent's error.
        agent: The delegated agent's name.
        run_id: The sub-run's id.
        reason: The sub-run's ``agent_cancelled.reason``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        agent: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message or "the sub-run was cancelled")
        self.agent = agent
        self.run_id = run_id
        self.reason = reason
