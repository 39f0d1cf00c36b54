"""Per-run knobs of the agent API, with the defaults docs/architecture.md asks to document.

They live in one frozen dataclass so that the runner can build them once from
configuration and hand the same value to every run: nothing an agent does can
change another run's limits (docs/architecture.md invariant 6, "Bounded everything").
The class is the ``agents`` section of :class:`agentcast.settings.AgentcastSettings`
seen by one run: defaults and rules come from there, so they match the
``AGENTCAST_*`` variables of the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..settings import check_field, default_of

__all__ = ["AgentSettings"]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Limits and timings applied to one run.

    Attributes:
        text_coalesce_ms: Streamed text (``ctx.say``) is buffered for this long
            and sent as one ``text_delta``; per-token events are expensive to
            append and fan out (docs/architecture.md, "Lessons from the systems
            before us"). ``0`` sends every chunk at once.
        tool_timeout_s: Default time limit of a tool call; a tool's own
            ``timeout_s`` wins.
        tool_concurrency: How many tool calls of one run may execute at once;
            further calls wait their turn before ``tool_executing`` is emitted.
        max_value_bytes: Tool parameters, tool results and custom values larger
            than this (as JSON) are replaced by a truncation marker
            (:func:`agentcast.events.bounded_json`).

    Raises:
        agentcast.settings.InvalidSetting: (a ``ValueError``) a value breaks its
            rule: ``text_coalesce_ms >= 0``, ``tool_timeout_s > 0``,
            ``tool_concurrency >= 1``, ``max_value_bytes >= 64``.
    """

    text_coalesce_ms: float = default_of("text_coalesce_ms")
    tool_timeout_s: float = default_of("tool_timeout_s")
    tool_concurrency: int = default_of("tool_concurrency")
    max_value_bytes: int = default_of("max_value_bytes")
    #: A run's conversation history: earlier turns of its thread at most.
    history_max_turns: int = default_of("history_max_turns")
    #: ... and tokens at most (characters / 4), the oldest turns dropped first.
    history_max_tokens: int = default_of("history_max_tokens")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))

    @classmethod
    def of(cls, settings: Any) -> AgentSettings:
        """The agent settings of anything with these attributes (``EngineSettings``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})
