"""``@tool`` specs as the ``tools`` of a Chat Completions request.

A :class:`~agentcast.agents.ToolSpec` already carries a JSON Schema of its
parameters (derived from the type hints) and a description (from the
docstring); the OpenAI function-calling format wraps them as
``{"type": "function", "function": {"name", "description", "parameters"}}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..agents.tools import ToolSpec

__all__ = ["openai_tools"]


def openai_tools(specs: Iterable[ToolSpec[..., Any]]) -> list[dict[str, Any]]:
    """The request's ``tools`` for ``specs``, in their order."""
    tools: list[dict[str, Any]] = []
    for spec in specs:
        function: dict[str, Any] = {"name": spec.name, "parameters": spec.parameters_schema}
        if spec.description:
            function["description"] = spec.description
        tools.append({"type": "function", "function": function})
    return tools
