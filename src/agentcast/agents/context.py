"""``RunContext``: everything an agent may do while it runs, and nothing more.

An agent never emits an event directly. It calls :meth:`RunContext.think`,
:meth:`~RunContext.say`, :meth:`~RunContext.call_tool` … and the context turns
each call into a valid event through the runner's ``emit`` — the only way out
(docs/architecture.md: "Nothing appends to the log except the bridge"). The lifecycle
events (``agent_started`` and the terminal event) belong to the runner; the
context offers no way to emit them, so an agent cannot break invariant 3.

Ordering. All of a context's emits are serialised by one lock, and streamed
text that is still being coalesced is flushed *before* any other event of the
context, so a client sees exactly the order the agent produced: text said
before a ``think`` arrives before it. Streamed reasoning (:meth:`RunContext.think_stream`)
is coalesced the same way in the same buffer, which holds one kind at a time:
switching from text to reasoning (or back) sends what is pending first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from .. import events
from ..errors import InternalError, InvalidEvent, InvalidTransition, NotFound
from .settings import AgentSettings
from .tools import EmitFn, ToolDispatcher, ToolSpec
from .whole import whole

if TYPE_CHECKING:
    from .registry import AgentRegistry

__all__ = ["MAX_PENDING_CHARS", "DelegateFn", "RunContext", "StreamKind", "UsageFn"]

logger = logging.getLogger(__name__)

#: ``await delegate(parent_ctx, agent_name, message)`` runs a sub-run to its
#: end and returns its final response (the runner provides it).
DelegateFn = Callable[["RunContext", str, str], Awaitable[str]]

#: ``on_usage(agent, model, counts)``: one model call's token counts, as reported.
UsageFn = Callable[[str, str, Mapping[str, int]], None]

#: Pending text above this many characters is sent at once instead of waiting
#: for the window: it bounds both the buffer and a single ``text_delta``.
MAX_PENDING_CHARS: Final = 16_384

#: What the coalescing buffer holds: answer text (``text_delta``) or reasoning
#: (``thinking_delta``).
StreamKind = Literal["text", "thinking"]
_DELTA_EVENT: Final[dict[StreamKind, str]] = {"text": "text_delta", "thinking": "thinking_delta"}
_KIND_OF: Final[dict[str, StreamKind]] = {v: k for k, v in _DELTA_EVENT.items()}
_USAGE_FIELDS: Final = ("prompt_tokens", "completion_tokens", "total_tokens")


class RunContext:
    """The handle an agent gets for one run (or sub-run).

    Created by the runner; an agent only uses it. Not reusable: once
    :meth:`aclose` has run, every method raises
    :class:`~agentcast.errors.InvalidTransition`.

    Args:
        run_id: This run's id.
        thread_id: The thread the run belongs to.
        user_id: The user the run acts for.
        agent: The agent's registered name.
        message: The run's input.
        parent_run_id: Set for a sub-run: the delegating run.
        emit: The runner's emit function (validates, stamps, appends).
        delegate: The runner's sub-run function; ``None`` disables
            :meth:`delegate`.
        registry: Where :meth:`call_tool` finds tools by name.
        settings: The run's limits; defaults when omitted.
        history: The thread's earlier turns (see :attr:`history`).
        on_usage: Called with ``(agent, model, counts)`` for each usage
            reported with a model (the runner counts it in its metrics).
    """

    def __init__(
        self,
        *,
        run_id: str,
        thread_id: str,
        user_id: str,
        agent: str,
        message: str,
        parent_run_id: str | None = None,
        emit: EmitFn,
        delegate: DelegateFn | None = None,
        registry: AgentRegistry | None = None,
        settings: AgentSettings | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        on_usage: UsageFn | None = None,
    ) -> None:
        self._run_id = run_id
        self._thread_id = thread_id
        self._user_id = user_id
        self._agent = agent
        self._message = message
        self._parent_run_id = parent_run_id
        self._emit_fn = emit
        self._delegate_fn = delegate
        self._registry = registry
        self._settings = settings or AgentSettings()
        self._history = tuple(history)
        self._on_usage = on_usage
        self._lock = asyncio.Lock()
        self._pending: list[str] = []
        self._pending_kind: StreamKind = "text"
        self._said: list[str] = []
        # UNSET: no usage reported (agent_completed has no ``usage``); None: only
        # model calls whose provider reported none; else the sum.
        self._usage: dict[str, int] | msgspec.UnsetType | None = msgspec.UNSET
        self._timer: asyncio.Task[None] | None = None
        self._next_step = 1
        self._closing = False
        self._closed = False
        self._tools = ToolDispatcher(self._emit, settings=self._settings, resolve=self._find_tool)

    def __repr__(self) -> str:
        return f"<RunContext run_id={self._run_id!r} agent={self._agent!r}>"

    # Properties

    @property
    def run_id(self) -> str:
        """This run's id."""
        return self._run_id

    @property
    def thread_id(self) -> str:
        """The thread this run belongs to."""
        return self._thread_id

    @property
    def user_id(self) -> str:
        """The user this run acts for."""
        return self._user_id

    @property
    def agent(self) -> str:
        """The agent's registered name."""
        return self._agent

    @property
    def message(self) -> str:
        """The run's input message."""
        return self._message

    @property
    def history(self) -> tuple[Mapping[str, Any], ...]:
        """The thread's earlier turns, oldest first, as chat-completion messages.

        Read when the run started (a run that waited in the queue sees the
        answers of the runs before it) and bounded by ``history_max_turns``
        and ``history_max_tokens``; each item maps directly onto an OpenAI
        Chat Completions message (``role``, ``content``, ``tool_calls``,
        ``tool_call_id``). Empty for a sub-run and for a thread's first run.
        """
        return self._history

    @property
    def parent_run_id(self) -> str | None:
        """The delegating run's id, for a sub-run; else ``None``."""
        return self._parent_run_id

    @property
    def settings(self) -> AgentSettings:
        """The run's limits."""
        return self._settings

    @property
    def registry(self) -> AgentRegistry | None:
        """The registry tools are looked up in (e.g. to describe them to a model)."""
        return self._registry

    @property
    def message_id(self) -> str:
        """The ``message_id`` of this run's ``text_delta`` events: ``msg_<run_id>``.

        A run streams one message, so one id per run lets a client append
        every delta of the run to the same bubble, and a sub-run's text (its
        own run id) to another.
        """
        return f"msg_{self._run_id}"

    @property
    def text(self) -> str:
        """Everything said with :meth:`say` so far, including text not yet sent."""
        return "".join(self._said)

    @property
    def usage(self) -> dict[str, int] | msgspec.UnsetType | None:
        """The usage summed by :meth:`report_usage`, for ``agent_completed.usage``.

        ``msgspec.UNSET``: nothing reported (no ``usage`` field); ``None``: every
        report was ``None`` (the provider sent none); else the sum of the known
        ``{"prompt_tokens", "completion_tokens", "total_tokens"}`` reports.
        """
        return dict(self._usage) if isinstance(self._usage, dict) else self._usage

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    # Public methods

    async def think(
        self, reasoning: str, progress: float | None = None, step: int | None = None
    ) -> None:
        """Emit ``agent_thinking``: a reasoning step the user should see.

        Args:
            reasoning: What the agent is doing or concluding.
            progress: Overall progress of the run, 0 to 1.
            step: The step number; ``None`` continues from the previous step (1, 2, …).

        Raises:
            InvalidEvent: ``progress`` outside 0..1 or a negative ``step``.
        """
        if step is None:
            step = self._next_step
        self._next_step = step + 1
        data: dict[str, Any] = {"reasoning": reasoning, "step": step}
        if progress is not None:
            data["progress"] = progress
        await self._emit("agent_thinking", data)

    async def progress(self, percentage: float, message: str | None = None) -> None:
        """Emit ``progress``: coarse progress, 0 to 100, with an optional label."""
        data: dict[str, Any] = {"percentage": percentage}
        if message is not None:
            data["message"] = message
        await self._emit("progress", data)

    async def say(self, text: str) -> None:
        """Stream ``text`` to the user (tokens or chunks of the answer).

        Text is buffered and sent as one ``text_delta`` per
        ``settings.text_coalesce_ms`` window, or at once before any other
        event of this context, or when more than :data:`MAX_PENDING_CHARS`
        are pending. ``say`` itself does not wait for the event log.

        Raises:
            EventTooLarge: the text to send at once is over ``max_event_bytes``;
                it is not sent (and not kept pending), the run goes on.
        """
        self._check_open()
        if not text:
            return
        self._said.append(text)
        await self._stream("text", text)

    async def think_stream(self, delta: str) -> None:
        """Stream reasoning (a model's thinking tokens) as ``thinking_delta`` events.

        Coalesced like :meth:`say`, under this run's :attr:`message_id`, and kept
        in order with everything else: pending text is sent before reasoning
        starts, pending reasoning before text or any other event follows. Use
        :meth:`think` for a discrete step. Not part of :attr:`text`.

        Raises:
            EventTooLarge: as for :meth:`say`.
        """
        self._check_open()
        if not delta:
            return
        await self._stream("thinking", delta)

    def report_usage(self, usage: Mapping[str, int] | None, *, model: str | None = None) -> None:
        """Add one model call's token usage to this run's (see :attr:`usage`).

        Args:
            usage: ``prompt_tokens``, ``completion_tokens`` (``total_tokens``
                defaults to their sum), or ``None``: the provider reported none.
                The runner adds a sub-run's total to its parent's the same way
                (without ``model``: those tokens were counted once already).
            model: The model that used them; given, they are also counted in
                ``agentcast_llm_tokens_total{agent,model,kind}``.

        Raises:
            ValueError: a count that is missing, negative or not an integer.
        """
        if usage is None:
            if self._usage is msgspec.UNSET:
                self._usage = None
            return
        counts = dict(usage)
        counts.setdefault(
            "total_tokens", counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
        )
        for name in _USAGE_FIELDS:
            value = counts.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"usage {name} must be an integer >= 0, not {value!r}")
        base = self._usage if isinstance(self._usage, dict) else dict.fromkeys(_USAGE_FIELDS, 0)
        self._usage = {name: base[name] + counts[name] for name in _USAGE_FIELDS}
        if model is not None and self._on_usage is not None:
            self._on_usage(self._agent, model, counts)

    async def run_tool_call(
        self,
        tool_call_id: str,
        name_or_spec: str | ToolSpec[..., Any],
        arguments: Mapping[str, Any],
        *,
        refused: str | None = None,
    ) -> Any:
        """:meth:`call_tool` for a model's call: its events carry the model's ``tool_call_id``.

        ``refused`` reports a call that must not run (arguments that are not
        JSON, a tool the agent does not offer) as a pair with status ``error``
        and ``refused`` as its error, so the user sees the model's mistake.

        Raises:
            ToolError: refused, invalid arguments, or the tool raised.
            ToolTimeout: the tool exceeded its time limit.
        """
        return await self._tools.call(
            name_or_spec, arguments, tool_call_id=tool_call_id, refused=refused
        )

    async def _stream(self, kind: StreamKind, text: str) -> None:
        """Buffer ``text`` of ``kind``; what is pending of the other kind is sent first."""
        while self._pending and self._pending_kind != kind:
            await self._emit_locked(None, None)
        self._pending_kind = kind
        self._pending.append(text)
        window = self._settings.text_coalesce_ms / 1000
        if window <= 0 or sum(map(len, self._pending)) >= MAX_PENDING_CHARS:
            await self._emit_locked(None, None)
        elif self._timer is None:
            self._timer = asyncio.create_task(
                self._flush_after(window), name=f"agentcast-text-{self._run_id}"
            )

    async def call_tool(self, name_or_spec: str | ToolSpec[..., Any], /, **args: Any) -> Any:
        """Call a tool, reported as ``tool_executing`` then ``tool_completed``.

        Args:
            name_or_spec: A :class:`ToolSpec`, or the name of a registry tool.
            **args: The tool's arguments, validated against its signature.

        Returns:
            What the tool returned (unbounded; the event carries a bounded copy).

        Raises:
            ToolError: the tool is unknown, the arguments are invalid, or the
                tool raised.
            ToolTimeout: the tool exceeded its time limit.
        """
        return await self._tools.call(name_or_spec, args)

    async def custom(self, name: str, value: Any) -> None:
        """Emit a ``custom`` event (application-defined ``name`` and ``value``).

        The value is redacted like tool parameters and bounded by
        ``settings.max_value_bytes``.

        Raises:
            InvalidEvent: an empty ``name``, or a value that is not JSON.
        """
        bounded = events.bounded_json(events.redact(value), self._settings.max_value_bytes)
        await self._emit("custom", {"name": name, "value": bounded})

    async def delegate(self, agent: str, message: str) -> str:
        """Run ``agent`` as a sub-run of this run and return its final response.

        The sub-run has its own run id and lifecycle events, emitted by the
        runner with this run as ``parent_run_id``. Text still pending here is
        sent first, so it precedes the sub-run's events.

        Raises:
            NotFound: no agent of that name.
            SubRunFailed: the sub-run ended with ``agent_error``.
        """
        if self._delegate_fn is None:
            raise InternalError("delegation is not available in this run")
        await self._emit_locked(None, None)
        return await self._delegate_fn(self, agent, message)

    async def aclose(self) -> None:
        """End the context: send pending text and stop the coalescing timer.

        The runner calls this after the agent returns, raises or is cancelled,
        and before it emits the terminal event. Tool calls the agent left
        running in other tasks (e.g. a ``gather`` sibling after a failure) are
        cancelled here so that their ``tool_completed`` still precedes the
        terminal event. Idempotent.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            await self._tools.cancel_inflight()
            async with self._lock:
                await self._flush_locked()
        finally:
            self._closed = True
            self._closing = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # Private methods

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidTransition(f"the run context of {self._run_id} is closed")

    async def _emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        await self._emit_locked(event_type, data)

    async def _emit_locked(self, event_type: str | None, data: Mapping[str, Any] | None) -> None:
        """Flush pending text, then emit one event (if any), under the lock."""
        self._check_open()
        async with self._lock:
            await self._flush_locked()
            if event_type is not None and data is not None:
                await self._emit_fn(event_type, data)

    async def _flush_locked(self) -> None:
        """Send the pending text as one ``text_delta`` (or ``thinking_delta``).

        The caller holds the lock.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if not self._pending:
            return
        # Taken out before the emit, and the emit is awaited whole: once
        # submitted the text is committed even if this task is cancelled
        # meanwhile, so keeping it pending would send it twice. An emit that
        # raises committed nothing: the text goes back to the front — unless it
        # was refused (EventTooLarge): kept, it would be refused again before
        # every later event of the run. ``say`` does not take the lock: text
        # arriving during the emit stays pending.
        delta = "".join(self._pending)
        self._pending.clear()
        event_type = _DELTA_EVENT[self._pending_kind]
        try:
            await whole(self._emit_fn(event_type, {"message_id": self.message_id, "delta": delta}))
        except (asyncio.CancelledError, InvalidEvent):
            raise  # cancelled: only once the text was committed; invalid: never sendable
        except BaseException:
            kind = _KIND_OF[event_type]
            if self._pending and self._pending_kind != kind:
                # The other kind arrived meanwhile (another task): putting this
                # back in front would send it under the wrong event type.
                logger.warning("dropping unsent %s of %s", event_type, self._run_id)
            else:
                self._pending.insert(0, delta)
                self._pending_kind = kind
            raise

    async def _flush_after(self, delay: float) -> None:
        """The coalescing timer: flush when the window has elapsed.

        Nobody awaits this task, so a failure is logged here; the text stays
        pending and the context's next emit (or ``aclose``) sends it again, or
        raises the same error to the agent.
        """
        await asyncio.sleep(delay)
        try:
            async with self._lock:
                await self._flush_locked()
        except Exception:
            logger.warning("sending coalesced text of %s failed", self._run_id, exc_info=True)

    def _find_tool(self, name: str) -> ToolSpec[..., Any]:
        if self._registry is None:
            raise NotFound(f"unknown tool {name!r}")
        return self._registry.tool(name)
