"""What :class:`~agentcast.llm.ChatAgent` sees of the local model: an SDK-shaped client.

:class:`LocalClient` quacks like the part of ``openai.AsyncOpenAI`` that
ChatAgent uses — ``with_options(...)`` and ``await chat.completions.create(...,
stream=True)`` returning an async-iterable, async-closable :class:`LocalStream`
of chunks with ``.choices[0].delta.content``, ``.choices[0].finish_reason`` and
``.usage`` — so the agent's loop runs unchanged over a model on this machine.
A :class:`_Job` is one generation's hand-over between the worker thread of
:class:`~agentcast.llm.local.LocalModel` and the event loop: a bounded queue
and a stop flag (docs/llm.md, "A real model, offline").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..agents.sanitize import sanitize_text
from .errors import LlmProviderError

if TYPE_CHECKING:
    from .local import LocalModel

__all__ = ["DEFAULT_MODEL_NAME", "LocalClient", "LocalStream"]

#: The name chunks carry as their ``model``.
DEFAULT_MODEL_NAME: Final = "SmolLM2-135M-Instruct"
#: Request fields passed on to llama-cpp-python's ``create_chat_completion``.
_PASSED: Final = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
    }
)
#: How often a worker blocked on a full hand-over looks at its stop flag.
_CREDIT_POLL_S: Final = 0.05
_MAX_ERROR_TEXT: Final = 200


# The chunk objects: the attributes ChatAgent's StepReader reads, nothing more.


@dataclass(frozen=True, slots=True)
class _Delta:
    content: str | None = None
    role: str | None = None
    tool_calls: None = None
    model_extra: None = None


@dataclass(frozen=True, slots=True)
class _Choice:
    delta: _Delta
    finish_reason: str | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class _Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class _Chunk:
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str = DEFAULT_MODEL_NAME
    object: str = "chat.completion.chunk"


_END: Final = object()


@dataclass(slots=True, eq=False)
class _Job:
    """One generation: the request, its stop flag, and its hand-over to the loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    credit: threading.Semaphore
    kwargs: dict[str, Any]
    include_usage: bool
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def push(self, item: Any) -> bool:
        """Hand a chunk to the loop, waiting for room; False once stopped (or no loop)."""
        while not self.credit.acquire(timeout=_CREDIT_POLL_S):
            if self.stop.is_set() or self.loop.is_closed():
                return False
        return not self.stop.is_set() and self.finish(item)

    def finish(self, item: Any) -> bool:
        """Hand the last item (end, error) to the loop: there is always room for it."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading
            self.stop.set()
            return False
        return True


class LocalStream:
    """One generation's chunks, as ``openai.AsyncStream`` offers them to ChatAgent."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._ended = False

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> _Chunk:
        if self._ended:
            raise StopAsyncIteration
        item = await self._job.queue.get()
        if isinstance(item, _Chunk):
            self._job.credit.release()
            return item
        self._ended = True
        if item is _END:
            raise StopAsyncIteration
        raise _describe(item)

    async def close(self) -> None:
        """Stop the generation: the worker stops before its next token."""
        self._ended = True
        self._job.stop.set()

    aclose = close

    async def __aenter__(self) -> LocalStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Completions:
    def __init__(self, model: LocalModel) -> None:
        self._model = model

    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = False,
        stream_options: Mapping[str, Any] | None = None,
        tools: Sequence[Any] | None = None,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        **options: Any,
    ) -> LocalStream:
        """Start one generation; its chunks come through the returned stream.

        ``model`` and other fields llama.cpp has no use for (``tool_choice``,
        ``extra_body`` …) are ignored.

        Raises:
            LlmProviderError: ``tools`` were given, or ``stream`` was not true.
            LlmRateLimited: ``max_waiting`` generations are already queued.
        """
        if tools:
            raise LlmProviderError(
                "the local model is not offered tools (a 135M model cannot choose them "
                "reliably): use a ChatAgent without tools or agents"
            )
        if not stream:
            raise LlmProviderError("the local model only streams (stream=True)")
        limit = max_completion_tokens if max_completion_tokens is not None else max_tokens
        kwargs: dict[str, Any] = {k: v for k, v in options.items() if k in _PASSED}
        kwargs["messages"] = [dict(m) for m in messages]
        kwargs["max_tokens"] = min(limit or self._model.max_tokens, self._model.max_tokens)
        include_usage = bool((stream_options or {}).get("include_usage"))
        return self._model._start(kwargs, include_usage)


class _Chat:
    def __init__(self, model: LocalModel) -> None:
        self.completions = _Completions(model)


class LocalClient:
    """What ChatAgent uses of ``openai.AsyncOpenAI``, served by a :class:`LocalModel`."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.chat = _Chat(model)

    def with_options(self, **_options: Any) -> LocalClient:
        """This client: there are no retries or timeouts to configure."""
        return self

    async def close(self) -> None:
        """Nothing to close: the model outlives its clients (:meth:`LocalModel.close`)."""


def _describe(exc: BaseException) -> LlmProviderError:
    """The run's error for an exception of the worker (llama.cpp's own text sanitised)."""
    text = sanitize_text(str(exc))
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 1] + "…"
    return LlmProviderError(
        f"the local model failed: {type(exc).__name__}" + (f": {text}" if text else "")
    )
