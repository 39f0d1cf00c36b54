"""Conversation history: a thread's earlier turns as chat-completion messages.

A *turn* is one earlier top-level run of the thread: its user message and
everything it answered. The store keeps each turn, already in the form the
OpenAI Chat Completions API takes, beside the thread's messages when the run's
terminal event is projected (in that event's transaction), so history never
depends on the event log's retention. This module is the pure half:

* :class:`TurnBuilder` folds one run's events (``text_delta``,
  ``tool_executing``, ``tool_completed``, then the terminal event) into the
  turn's messages. Both stores use it, so they store the same turns.
* :func:`turns_that_fit` applies ``history_max_turns`` and
  ``history_max_tokens``: newest turns first, whole turns only.
* :func:`history_messages` flattens the turns a run gets into
  ``RunContext.history``.

What a turn holds (docs/python-api.md, "Conversation history"):

* ``{"role": "user", "content": <the run's input>}`` first;
* for each group of tool calls that got an answer, an assistant message with
  the text said before the calls (or ``None``) and its ``tool_calls``, then one
  ``tool`` message per answered call, in call order. Calls made with no text
  said between them form one group. A call without an answer — cancelled with
  its run, or left open by a process that died — is left out, since providers
  refuse an unanswered call; its group's text then joins the next text;
* a completed run's final response as the last assistant message; a failed or
  cancelled run's text streamed after its last answered calls, followed by
  :data:`INTERRUPTED_MARKER`. A failed or cancelled run that said nothing and
  has no answered call contributes only its user message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from ..events import EventType

__all__ = [
    "CHARS_PER_TOKEN",
    "INTERRUPTED_MARKER",
    "TURN_EVENT_TYPES",
    "TurnBuilder",
    "history_messages",
    "turn_chars",
    "turns_that_fit",
]

#: Ends the partial answer of a run that failed or was cancelled.
INTERRUPTED_MARKER: Final = "[interrupted]"

#: The token estimate: characters of contents and tool arguments divided by this.
CHARS_PER_TOKEN: Final = 4

#: ``tool_completed`` statuses that answer a call (``cancelled`` does not).
_ANSWERED: Final = frozenset({"success", "error", "timeout"})

#: The event types a turn is built from, besides the terminal one.
TURN_EVENT_TYPES: Final = frozenset(
    {EventType.TEXT_DELTA, EventType.TOOL_EXECUTING, EventType.TOOL_COMPLETED}
)


class _Data(msgspec.Struct):
    """The fields of every payload a turn reads; the rest are ignored."""

    delta: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    parameters: msgspec.Raw = msgspec.Raw()  # empty when absent
    status: str | None = None
    results: msgspec.Raw = msgspec.Raw()
    error: str | None = None
    final_response: str | None = None
    error_type: str | None = None


class _Envelope(msgspec.Struct):
    data: _Data


_decoder = msgspec.json.Decoder(_Envelope)
_str_decoder = msgspec.json.Decoder(str)


@dataclass(slots=True)
class _Call:
    call_id: str
    name: str
    arguments: str
    status: str | None = None
    content: str = ""


@dataclass(slots=True)
class _Group:
    calls: list[_Call] = field(default_factory=list)


class TurnBuilder:
    """Folds one top-level run's events into its turn, in seq order.

    Feed every event of the run with :meth:`add` (others than the turn's types
    are ignored, and an event at or below the last seq fed is skipped, so a
    batch fed again after a refused append is not counted twice), then the
    terminal event to :meth:`finish`.
    """

    def __init__(self, user_message: str) -> None:
        self._user = user_message
        self._segments: list[str | _Group] = []
        self._calls: dict[str, _Call] = {}
        self._last_seq = 0

    def add(self, seq: int, event_type: str, raw: bytes) -> None:
        """Take one event of the run (the envelope bytes as stored)."""
        if seq <= self._last_seq or event_type not in TURN_EVENT_TYPES:
            return
        self._last_seq = seq
        data = _decoder.decode(raw).data
        if event_type == EventType.TEXT_DELTA:
            if self._segments and isinstance(self._segments[-1], str):
                self._segments[-1] += data.delta or ""
            else:
                self._segments.append(data.delta or "")
        elif event_type == EventType.TOOL_EXECUTING:
            arguments = bytes(data.parameters).decode() or "{}"
            call = _Call(data.tool_call_id or "", data.tool_name or "", arguments)
            self._calls[call.call_id] = call
            if not self._segments or isinstance(self._segments[-1], str):
                self._segments.append(_Group())
            last = self._segments[-1]
            assert isinstance(last, _Group)
            last.calls.append(call)
        else:
            found = self._calls.get(data.tool_call_id or "")
            if found is not None:
                found.status = data.status
                found.content = _result_text(data)

    def finish(self, event_type: str, raw: bytes) -> list[dict[str, Any]]:
        """The turn's messages, given the run's terminal event."""
        data = _decoder.decode(raw).data
        # A process that died left calls open; recovery answers them with an
        # ``error`` naming the run's error_type: no real answer, so left out.
        lost = data.error_type if event_type == EventType.AGENT_ERROR else None
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._user}]
        pending: list[str] = []
        for segment in self._segments:
            if isinstance(segment, str):
                pending.append(segment)
                continue
            answered = [c for c in segment.calls if _is_answered(c, lost)]
            if not answered:
                continue  # its text joins the next text
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(pending) or None,
                    "tool_calls": [_tool_call(c) for c in answered],
                }
            )
            messages.extend(
                {"role": "tool", "tool_call_id": c.call_id, "content": c.content} for c in answered
            )
            pending = []
        if event_type == EventType.AGENT_COMPLETED:
            messages.append({"role": "assistant", "content": data.final_response or ""})
            return messages
        text = "".join(pending)
        if text or len(messages) > 1:
            partial = f"{text}\n\n{INTERRUPTED_MARKER}" if text else INTERRUPTED_MARKER
            messages.append({"role": "assistant", "content": partial})
        return messages


def _is_answered(call: _Call, lost: str | None) -> bool:
    if call.status not in _ANSWERED:
        return False
    return not (lost is not None and call.status == "error" and call.content == _error(lost))


def _error(text: str) -> str:
    return f"Error: {text}"


def _result_text(data: _Data) -> str:
    """A tool's answer as the ``content`` of its ``tool`` message."""
    if data.status == "success":
        raw = bytes(data.results)
        if raw.startswith(b'"'):
            return _str_decoder.decode(raw)  # a string result as itself, not quoted
        return raw.decode()
    if data.status == "timeout":
        return f"Timeout: {data.error or 'the tool call timed out'}"
    return _error(data.error or "the tool call failed")


def _tool_call(call: _Call) -> dict[str, Any]:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def turn_chars(messages: Iterable[Mapping[str, Any]]) -> int:
    """The characters a turn costs: contents plus tool-call arguments."""
    total = 0
    for message in messages:
        total += len(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            total += len(call["function"]["arguments"])
    return total


def turns_that_fit(chars_newest_first: Sequence[int], max_turns: int, max_tokens: int) -> int:
    """How many of the newest turns the bounds let a run see.

    At most ``max_turns``, and the newest ones whose estimate together
    (characters ÷ :data:`CHARS_PER_TOKEN`, rounded up) stays within
    ``max_tokens``: the oldest are dropped first, whole, and history stays
    contiguous, so a turn larger than the budget alone ends it (it and every
    older turn are dropped).
    """
    budget = max(max_tokens, 0) * CHARS_PER_TOKEN
    used = 0
    count = 0
    for chars in chars_newest_first[: max(max_turns, 0)]:
        used += chars
        if used > budget:
            break
        count += 1
    return count


def history_messages(turns: Iterable[Sequence[Mapping[str, Any]]]) -> tuple[dict[str, Any], ...]:
    """The turns (oldest first) as one tuple of chat-completion messages."""
    return tuple(dict(message) for turn in turns for message in turn)
