"""The built-in agents: ``demo`` (with its sub-agents), ``echo`` and ``countdown``.

docs/protocol.md ("Built-in agents") fixes what ``echo`` and ``countdown`` emit;
clients and benchmarks rely on it. :func:`builtin_registry` builds a new
registry with them; :data:`registry` is one ready to serve, for
``agentcast serve --agents agentcast.agents.builtin:registry`` beside your own.

The built-in agents register themselves here, from the outside of the
registry module: the registry knows nothing of them (no import cycle).
"""

from __future__ import annotations

from ..registry import AgentRegistry
from . import countdown, demo, echo

__all__ = ["builtin_registry", "register_builtins", "registry"]


def register_builtins(
    registry: AgentRegistry, *, demo_pace: float = 1.0, writer: demo.Writer | None = None
) -> None:
    """Add every built-in agent and its tools to ``registry``."""
    demo.register(registry, pace=demo_pace, writer=writer)
    echo.register(registry)
    countdown.register(registry)


def builtin_registry(*, demo_pace: float = 1.0, writer: demo.Writer | None = None) -> AgentRegistry:
    """A new registry with the built-in agents: ``demo`` (and sub-agents), ``echo``, ``countdown``.

    Args:
        demo_pace: Scales the demo's pauses between steps (``0`` for tests,
            ``1`` to look live and still finish within about two seconds).
        writer: A model that writes the demo's answers from its report
            (``agentcast.llm.ChatAgent``); ``None``: templated prose.
    """
    new = AgentRegistry()
    register_builtins(new, demo_pace=demo_pace, writer=writer)
    return new


#: The built-in agents, ready to serve (a catalogue: it holds no per-run state).
registry: AgentRegistry = builtin_registry()
