"""Reading one streamed chat completion: deltas out to the run, tool calls assembled.

A Chat Completions stream interleaves three things in its chunks' ``delta``:
answer text (``content``), reasoning (``reasoning_content`` from vLLM and
DeepSeek, ``reasoning`` from Ollama and OpenRouter — fields the SDK does not
declare and keeps as extras), and tool calls whose ``id``/``name`` come once
and whose ``arguments`` arrive in pieces, possibly interleaved between calls,
to be joined by ``index``. Usage comes last, in a chunk with no choices,
when the request asked for it. :class:`StepReader` does that bookkeeping;
the agent decides what to do with a finished step. It reads two kinds of
chunk by the same attribute names: the SDK's pydantic ``ChatCompletionChunk``
(SDK-shaped clients such as the local model's) and the small structs of
:mod:`agentcast.llm.sse` (the SDK's client, its stream body read by agentcast).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["REASONING_FIELDS", "AssembledCall", "StepReader", "StepResult"]

#: Delta fields read as reasoning, in order of preference (one provider sends one).
REASONING_FIELDS: Final = ("reasoning_content", "reasoning")


@dataclass(slots=True)
class AssembledCall:
    """One tool call of a step, its arguments joined from their pieces."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def message(self) -> dict[str, Any]:
        """The call as it goes back to the model in the assistant message."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class StepResult:
    """What one model call produced."""

    text: str = ""
    calls: list[AssembledCall] = field(default_factory=list)
    #: ``{"prompt_tokens", "completion_tokens", "total_tokens"}``, or None when not sent.
    usage: dict[str, int] | None = None
    finish_reason: str | None = None


class StepReader:
    """Feeds chunks of one stream to the run (``say``/``think_stream``) and assembles the rest.

    Args:
        say: Where answer text goes (``ctx.say``).
        think: Where reasoning goes (``ctx.think_stream``).

    Attributes:
        emitted: Whether anything reached the run yet: a retry is only safe before.
    """

    def __init__(
        self, say: Callable[[str], Awaitable[None]], think: Callable[[str], Awaitable[None]]
    ) -> None:
        self._say = say
        self._think = think
        self._text: list[str] = []
        self._calls: dict[int, AssembledCall] = {}
        self._usage: dict[str, int] | None = None
        self._finish: str | None = None
        self.emitted = False

    async def feed(self, chunk: Any) -> None:
        """Take one chunk: a ``ChatCompletionChunk`` or an :class:`agentcast.llm.sse.Chunk`."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._usage = {
                "prompt_tokens": int(usage.prompt_tokens or 0),
                "completion_tokens": int(usage.completion_tokens or 0),
                "total_tokens": int(usage.total_tokens or 0),
            }
        for choice in chunk.choices or ():
            if getattr(choice, "index", 0) != 0:
                continue  # n > 1 is not supported: only the first choice is read
            if choice.finish_reason:
                self._finish = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            reasoning = _reasoning_of(delta)
            if reasoning:
                self.emitted = True
                await self._think(reasoning)
            if delta.content:
                self.emitted = True
                self._text.append(delta.content)
                await self._say(delta.content)
            for part in delta.tool_calls or ():
                self._add_call_part(part)

    def result(self) -> StepResult:
        """The step as read so far (the whole step once the stream ended)."""
        calls = [self._calls[i] for i in sorted(self._calls)]
        return StepResult("".join(self._text), calls, self._usage, self._finish)

    def _add_call_part(self, part: Any) -> None:
        index = part.index if isinstance(part.index, int) else len(self._calls)
        call = self._calls.setdefault(index, AssembledCall(index))
        if part.id:
            call.id = part.id
        function = part.function
        if function is not None:
            if function.name:
                call.name = function.name
            if function.arguments:
                call.arguments += function.arguments


def _reasoning_of(delta: Any) -> str:
    """The reasoning of a delta, from either kind of chunk.

    The SDK's pydantic chunks keep the undeclared reasoning fields in
    ``model_extra``; :class:`agentcast.llm.sse.ChunkDelta` declares them as
    attributes (and has no ``model_extra``).
    """
    extra: Mapping[str, Any] | None = getattr(delta, "model_extra", None)
    for name in REASONING_FIELDS:
        value = extra.get(name) if extra is not None else getattr(delta, name, None)
        if isinstance(value, str) and value:
            return value
    return ""
