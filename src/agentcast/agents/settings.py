"""Per-run knobs of the agent API, with the defaults docs/architecture.md asks to document.

They live in one frozen dataclass so that the runner can build them once from
configuration and hand the same value to every run: nothing an agent does can
change another run's limits (docs/architecture.md invariant 6, "Bounded everything").
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import events

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
    """

    text_coalesce_ms: float = 30
    tool_timeout_s: float = 60
    tool_concurrency: int = 4
    max_value_bytes: int = events.DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        if self.text_coalesce_ms < 0:
            raise ValueError("text_coalesce_ms must be >= 0")
        if self.tool_timeout_s <= 0:
            raise ValueError("tool_timeout_s must be > 0")
        if self.tool_concurrency < 1:
            raise ValueError("tool_concurrency must be >= 1")
        if self.max_value_bytes < 64:
            raise ValueError("max_value_bytes must be >= 64")
