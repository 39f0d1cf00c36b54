"""The built-in agents: ``demo`` (with its sub-agents), ``echo`` and ``countdown``.

docs/protocol.md ("Built-in agents") fixes what ``echo`` and ``countdown`` emit;
clients and benchmarks rely on it. Use
:func:`agentcast.agents.builtin_registry` to get them in a new registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import countdown, demo, echo

if TYPE_CHECKING:
    from ..registry import AgentRegistry

__all__ = ["register_builtins"]


def register_builtins(registry: AgentRegistry, *, demo_pace: float = 1.0) -> None:
    """Add every built-in agent and its tools to ``registry``."""
    demo.register(registry, pace=demo_pace)
    echo.register(registry)
    countdown.register(registry)
