"""How the CLI shows events: one line per step, sub-agents indented, text streamed live.

``agentcast run`` feeds every event of its run to a :class:`RunView`, which
prints finished steps above a live area (rich ``Live``) holding the text
being streamed and a spinner with the current status; ``agentcast replay``
prints the same lines with :func:`event_line`. Depth comes from
``parent_run_id`` alone, so the view needs nothing but the events.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.rule import Rule
from rich.spinner import Spinner
from rich.text import Text

from .client import Resync
from .events import Event, EventType

__all__ = ["RunClient", "RunView", "event_line", "follow", "summarize"]

_INDENT: Final = "  "
_MAX_VALUE_CHARS: Final = 120
_SUCCESS: Final = "✓"
_FAILURE: Final = "✗"


def summarize(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    """Compact one-line JSON of ``value``, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parameters(parameters: Any) -> str:
    if not isinstance(parameters, Mapping):
        return summarize(parameters)
    return summarize(
        ", ".join(f"{key}={json.dumps(value, default=str)}" for key, value in parameters.items())
    )


def _seconds(duration_ms: Any) -> str:
    if not isinstance(duration_ms, int | float):
        return ""
    return f"{duration_ms:.0f} ms" if duration_ms < 1000 else f"{duration_ms / 1000:.2f} s"


def event_line(event: Event, depth: int = 0, *, deltas: bool = False) -> Text | None:
    """One line describing ``event``.

    Args:
        event: Any event of the contract; unknown types are shown generically.
        depth: How many parents its run has (each level indents the line).
        deltas: Give ``text_delta`` and ``thinking_delta`` a line of their own
            (replays); otherwise they get ``None``: a live view streams text and
            shows reasoning as its status.
    """
    data = event.data
    pad = _INDENT * depth
    agent = escape(event.agent or "?")
    kind = event.type
    if kind == EventType.TEXT_DELTA:
        if not deltas:
            return None
        delta = json.dumps(str(data.get("delta", "")), ensure_ascii=False)
        return Text(pad + "text ", style="dim") + Text(delta)
    if kind == EventType.THINKING_DELTA:
        if not deltas:
            return None  # a live view shows that the model reasons, not every token
        delta = json.dumps(str(data.get("delta", "")), ensure_ascii=False)
        return Text(pad + "reasoning ", style="dim magenta") + Text(delta, style="dim")
    if kind == EventType.AGENT_STARTED:
        if depth == 0:
            markup = f"[bold]{agent}[/] started: {escape(summarize(data.get('message', '')))}"
        else:
            markup = f"↳ [bold cyan]{agent}[/] {escape(summarize(data.get('message', '')))}"
    elif kind == EventType.AGENT_THINKING:
        progress = data.get("progress")
        percent = f" [dim]{progress * 100:.0f}%[/]" if isinstance(progress, int | float) else ""
        markup = f"[magenta]thinking[/] {escape(str(data.get('reasoning', '')))}{percent}"
    elif kind == EventType.TOOL_EXECUTING:
        markup = (
            f"[yellow]▶ {escape(str(data.get('tool_name')))}[/]"
            f"[dim]({escape(_parameters(data.get('parameters', {})))})[/]"
        )
    elif kind == EventType.TOOL_COMPLETED:
        name = escape(str(data.get("tool_name")))
        took = _seconds(data.get("duration_ms"))
        if data.get("status") == "success":
            results = escape(summarize(data.get("results")))
            markup = f"[green]{_SUCCESS} {name}[/] [dim]{took}[/] → {results}"
        else:
            error = escape(summarize(data.get("error", "")))
            status = escape(str(data.get("status")))
            markup = f"[red]{_FAILURE} {name} {status}[/] [dim]{took}[/] {error}"
    elif kind == EventType.PROGRESS:
        message = escape(str(data.get("message") or ""))
        markup = f"[blue]progress[/] {data.get('percentage', 0):.0f}% {message}"
    elif kind == EventType.AGENT_COMPLETED:
        took = _seconds(data.get("duration_ms"))
        answer = escape(summarize(data.get("final_response", ""), 100))
        markup = f"[green]{_SUCCESS} {agent}[/] completed [dim]{took}[/] {answer}"
    elif kind == EventType.AGENT_ERROR:
        markup = (
            f"[red]{_FAILURE} {agent} failed ({escape(str(data.get('error_type')))}):[/] "
            f"{escape(str(data.get('message', '')))} [dim]{_seconds(data.get('duration_ms'))}[/]"
        )
    elif kind == EventType.AGENT_CANCELLED:
        markup = (
            f"[yellow]{_FAILURE} {agent} cancelled:[/] {escape(str(data.get('reason', '')))} "
            f"[dim]{_seconds(data.get('duration_ms'))}[/]"
        )
    elif kind == EventType.CUSTOM:
        markup = f"[blue]{escape(str(data.get('name')))}[/] {escape(summarize(data.get('value')))}"
    else:
        markup = f"[dim]{escape(kind)}[/] {escape(summarize(data))}"
    return Text.from_markup(pad + markup)


@dataclass
class RunView:
    """The live picture of one run and its sub-runs.

    Feed it events with :meth:`handle`; render it (it is a rich renderable)
    inside ``Live``. Lines for finished steps go to ``console`` above the live
    area. :attr:`outcome` is set when the top-level run's terminal event arrives.

    Args:
        console: Where finished lines are printed.
        run_id: The top-level run to follow; events of other runs of the
            thread (not its descendants) are ignored.
    """

    console: Console
    run_id: str
    status: str = "waiting for the agent"
    outcome: Event | None = None
    _depth: dict[str, int] = field(default_factory=dict)
    _streams: dict[str, list[str]] = field(default_factory=dict)
    _stream_depth: dict[str, int] = field(default_factory=dict)
    _spinner: Spinner = field(default_factory=lambda: Spinner("dots"))
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._depth[self.run_id] = 0

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        for message_id, chunks in self._streams.items():
            pad = _INDENT * self._stream_depth.get(message_id, 0)
            parts.append(Text(pad + "".join(chunks)))
        elapsed = time.monotonic() - self._started
        self._spinner.update(text=Text.from_markup(f"{escape(self.status)} [dim]{elapsed:.1f}s[/]"))
        parts.append(self._spinner)
        return Group(*parts)

    # Public methods

    def handle(self, event: Event) -> None:
        """Show ``event`` if it belongs to the followed run or one of its sub-runs."""
        depth = self._depth_of(event)
        if depth is None:
            return
        if event.type == EventType.TEXT_DELTA:
            message_id = str(event.data.get("message_id", event.run_id))
            self._streams.setdefault(message_id, []).append(str(event.data.get("delta", "")))
            self._stream_depth[message_id] = depth
            self.status = f"{event.agent} is writing"
            return
        if event.type == EventType.THINKING_DELTA:
            self.status = f"{event.agent} is reasoning"
            return
        if event.is_terminal and event.run_id == self.run_id:
            self.outcome = event
            self._streams.clear()
            self._show_outcome(event)
            return
        if event.is_terminal:
            self._flush_streams(depth)
        line = event_line(event, depth)
        if line is not None:
            self.console.print(line)
        self.status = self._status_after(event)

    def resync(self, resync: Resync) -> None:
        """Say that the server lost part of the thread's history (never a silent gap)."""
        self.console.print(
            Text(
                f"the server could not resume the thread; events restart after seq "
                f"{resync.after_seq} (epoch {resync.epoch})",
                style="yellow",
            )
        )

    def cancelling(self) -> None:
        """Say that a cancel was sent and the view waits for ``agent_cancelled``."""
        self.status = "cancelling (Ctrl-C again to stop waiting)"

    # Private methods

    def _depth_of(self, event: Event) -> int | None:
        known = self._depth.get(event.run_id)
        if known is not None:
            return known
        parent = event.parent_run_id
        if parent is None or parent not in self._depth:
            return None
        self._depth[event.run_id] = self._depth[parent] + 1
        return self._depth[event.run_id]

    def _flush_streams(self, depth: int) -> None:
        for message_id in [m for m, d in self._stream_depth.items() if d >= depth]:
            chunks = self._streams.pop(message_id, [])
            del self._stream_depth[message_id]
            if chunks:
                self.console.print(Text(_INDENT * depth + "".join(chunks), style="dim"))

    def _status_after(self, event: Event) -> str:
        data = event.data
        if event.type == EventType.TOOL_EXECUTING:
            return f"running {data.get('tool_name')}"
        if event.type == EventType.AGENT_THINKING:
            return f"{event.agent} is thinking"
        if event.type == EventType.PROGRESS:
            return f"{data.get('percentage', 0):.0f}% {data.get('message') or ''}".strip()
        if event.is_terminal:
            return f"{event.agent} is done; waiting for the next step"
        return f"{event.agent} is working"

    def _show_outcome(self, event: Event) -> None:
        data = event.data
        if event.type == EventType.AGENT_COMPLETED:
            self.console.print(Rule(f"answer from {event.agent}", style="green"))
            self.console.print(Markdown(str(data.get("final_response", ""))))
            self.console.print(
                Text.from_markup(
                    f"[green]{_SUCCESS} completed[/] in {_seconds(data.get('duration_ms'))}"
                )
            )
            return
        line = event_line(event, 0)
        if line is not None:
            self.console.print(line)


class RunClient(Protocol):
    """What :func:`follow` needs of :class:`agentcast.client.AgentcastClient`."""

    def events(self) -> AsyncIterator[Event | Resync]:
        """Every event of the subscribed threads, in seq order, resumed across reconnects."""
        ...

    async def cancel(self, run_id: str | None = None, thread_id: str | None = None) -> Any:
        """Cancel a run on the server."""
        ...


async def follow(client: RunClient, view: RunView) -> bool:
    """Show events live until the view's run ends.

    The first Ctrl-C sends ``cancel`` for the run and keeps showing events
    until its ``agent_cancelled`` arrives (the stop must reach the agent, not
    only the screen); a second Ctrl-C stops waiting.

    Returns:
        Whether Ctrl-C was pressed.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    cancels: list[asyncio.Task[Any]] = []

    def on_sigint() -> None:
        if cancels:
            if main is not None:
                main.cancel()
            return
        view.cancelling()
        cancels.append(loop.create_task(client.cancel(run_id=view.run_id)))

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        with Live(view, console=view.console, refresh_per_second=12, transient=True):
            async for item in client.events():
                if isinstance(item, Resync):
                    view.resync(item)
                    continue
                view.handle(item)
                if view.outcome is not None:
                    break
    except asyncio.CancelledError:
        if not cancels:
            raise
        return True
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in cancels:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and (error := task.exception()) is not None:
                view.console.print(Text(f"cancel failed: {error}", style="red"))
    return bool(cancels)
