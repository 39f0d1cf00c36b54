"""A local OpenAI-compatible Chat Completions server that replays scripted streams.

The LLM agent's tests and benchmarks talk to it with the real ``openai`` SDK over a
real socket on 127.0.0.1: nothing in the SDK is patched. The server is a small HTTP/1.1
implementation on :mod:`asyncio` (keep-alive, chunked ``text/event-stream``), so it
controls what a hand-written fault needs: a connection dropped mid-body, an invalid
JSON line, a stall that never writes, and it notices at once when the client goes away.

Model:

* A :class:`Scenario` scripts the answer to ONE request: a tuple of steps.
  Scenarios are served FIFO, one per ``POST /v1/chat/completions``; a multi-turn tool
  loop is several scenarios. A request with no scenario queued gets a 500 with
  ``x-should-retry: false`` and is listed in :attr:`ReplayServer.unscripted`.
* Every request is recorded (:class:`RecordedRequest`: the JSON body, headers, what
  was sent and how it ended, e.g. ``outcome == "disconnected"`` when the client
  abandoned the stream).

Example::

    async with serve() as server:
        server.queue(
            scenario(text("Hel", "lo"), stop(), usage(10, 2)),
            scenario(tool_calls([("call_1", "get_weather", {"city": "Paris"})])),
        )
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="m", messages=[...], stream=True)
        ...
        assert server.requests[0].body["messages"] == [...]

Chunks follow ``openai.types.chat.ChatCompletionChunk``: every chunk carries ``id``,
``object: "chat.completion.chunk"``, ``created``, ``model`` and ``system_fingerprint``;
the first one is the assistant role chunk (``{"role": "assistant", "content": ""}``)
as OpenAI and vLLM send it; when the request asked ``stream_options.include_usage``,
every chunk has ``"usage": null`` and the :func:`usage` step sends the final
``choices: []`` chunk, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from tests.utils import seconds, wait_until

# --- steps --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    """One chunk with one choice carrying ``delta`` (and maybe ``finish_reason``).

    ``paced`` chunks are the "tokens": a :func:`pace` or ``tokens_per_s`` spaces them.
    """

    delta: Mapping[str, Any]
    finish_reason: str | None = None
    paced: bool = True


@dataclass(frozen=True, slots=True)
class Usage:
    """The final usage chunk (``choices: []``), or the ChatCompletion's ``usage``."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    always: bool = False


@dataclass(frozen=True, slots=True)
class HttpError:
    """An HTTP error answered instead of the stream (must be the scenario's only step)."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An SSE event ``data: {"error": {...}}`` (optionally ``event: <name>``) mid-stream."""

    error: Mapping[str, Any]
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Raw:
    """Exact text written as one piece of the SSE body, e.g. an invalid JSON line."""

    data: str


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds`` at this point (at the start of a stream: time to first token)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Pace:
    """From here on, space paced chunks ``interval`` seconds apart (``None``: no pacing)."""

    interval: float | None


@dataclass(frozen=True, slots=True)
class PaceFrom:
    """From here on, paced chunk ``k`` is due at wall-clock ``start + k * interval``.

    An open-loop schedule on ``time.time()``: a chunk sent late does not delay
    the next one, and a receiver in another process that knows ``start`` and
    ``interval`` knows every chunk's due time (a benchmark's token latency).
    """

    start: float
    interval: float


@dataclass(frozen=True, slots=True)
class Stall:
    """Send nothing more, keep the connection open until the client leaves or ``max_s``.

    At ``max_s`` the server drops the connection (outcome ``"stalled"``).
    """

    max_s: float


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection now, without finishing the chunked body (no ``[DONE]``)."""


Step: TypeAlias = (
    Delta | Usage | HttpError | ErrorEvent | Raw | Delay | Pace | PaceFrom | Stall | Drop
)
Part: TypeAlias = "Step | Iterable[Part]"


@dataclass(frozen=True, slots=True)
class Scenario:
    """The scripted answer to one request. Build it with :func:`scenario`."""

    steps: tuple[Step, ...]
    #: Pace of the paced chunks from the start (a :func:`pace` step changes it).
    tokens_per_s: float | None = None
    #: Wait before answering at all (before the status line and headers).
    response_delay: float = 0.0
    #: Send OpenAI's leading ``{"role": "assistant", "content": ""}`` chunk.
    role_chunk: bool = True
    #: The ``model`` of the chunks; by default the request's.
    model: str | None = None
    name: str = ""


ScenarioLike: TypeAlias = "Scenario | Part"


def _flatten(parts: Iterable[Any]) -> Iterator[Step]:
    for part in parts:
        if isinstance(part, Step):
            yield part
        elif isinstance(part, Scenario):
            raise TypeError("a Scenario cannot be a step of another scenario")
        elif isinstance(part, Iterable) and not isinstance(part, str | bytes | Mapping):
            yield from _flatten(part)
        else:
            raise TypeError(f"not a step: {part!r}")


def scenario(
    *parts: Part,
    tokens_per_s: float | None = None,
    response_delay: float = 0.0,
    role_chunk: bool = True,
    model: str | None = None,
    name: str = "",
) -> Scenario:
    """A scenario from steps and lists of steps (helpers like :func:`text` return lists)."""
    steps = tuple(_flatten(parts))
    errors = [i for i, s in enumerate(steps) if isinstance(s, HttpError)]
    if errors and (errors != [0] or len(steps) != 1):
        raise ValueError("an http_error() must be the only step of its scenario")
    if tokens_per_s is not None and tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be > 0")
    return Scenario(steps, tokens_per_s, response_delay, role_chunk, model, name)


def as_scenario(value: ScenarioLike) -> Scenario:
    """A :class:`Scenario` as is; a step or a list of steps as a default scenario."""
    return value if isinstance(value, Scenario) else scenario(value)


# --- step helpers ---------------------------------------------------------------------


def text(*pieces: str) -> list[Step]:
    """Content chunks, one per piece: ``delta.content`` (every provider)."""
    return [Delta({"content": p}) for p in pieces]


def tokens(content: str) -> list[str]:
    """Split ``content`` into word-like tokens that join back to it exactly."""
    found = re.findall(r"\s*\S+|\s+$", content)
    return found or ([content] if content else [])


def reasoning(
    *pieces: str, field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
) -> list[Step]:
    """Reasoning chunks, one per piece, in a delta field the SDK does not declare.

    ``reasoning_content`` is what DeepSeek and vLLM (reasoning parsers) send;
    ``reasoning`` is what Ollama's and OpenRouter's OpenAI-compatible APIs send.
    The SDK keeps it as an extra field: ``delta.model_extra["reasoning_content"]``
    or ``getattr(delta, "reasoning_content", None)``.
    """
    return [Delta({field: p}) for p in pieces]


def chunk(delta: Mapping[str, Any], finish_reason: str | None = None, paced: bool = True) -> Delta:
    """Any delta as is (``refusal``, a provider's own field, ...)."""
    return Delta(dict(delta), finish_reason, paced)


def finish(reason: str) -> Delta:
    """The closing chunk: empty delta and ``finish_reason`` (how OpenAI ends a turn)."""
    return Delta({}, reason, paced=False)


def stop() -> Delta:
    """``finish_reason: "stop"``: the model ended its answer."""
    return finish("stop")


def length() -> Delta:
    """``finish_reason: "length"``: ``max_tokens`` (or the context) cut the answer."""
    return finish("length")


ToolCallSpec: TypeAlias = tuple[str, str, "str | Mapping[str, Any]"]


def tool_calls(
    calls: Sequence[ToolCallSpec],
    *,
    chunk: int | None = 8,
    interleave: bool = True,
    first_index: int = 0,
    finish_reason: str | None = "tool_calls",
) -> list[Step]:
    """Tool calls ``(id, name, arguments)`` streamed as ``delta.tool_calls``.

    Each call's first delta has ``index``, ``id``, ``type: "function"`` and
    ``function: {"name", "arguments": ""}`` (OpenAI's shape); then its arguments
    (a JSON string, or a mapping dumped to one) follow in pieces of ``chunk``
    characters carrying only ``index`` and ``function.arguments``. With
    ``interleave`` the calls' deltas alternate round-robin (vLLM and some routers
    do; a client must reassemble by ``index``); without it, call after call (OpenAI).
    ``chunk=None`` sends each call's whole arguments in its first delta
    (Gemini's and Ollama's compatible APIs). The name is not checked against the
    request's ``tools``: an unknown tool is just a name. Ends with
    ``finish_reason: "tool_calls"`` unless ``finish_reason`` is None.
    """
    sequences: list[list[Step]] = []
    for offset, (call_id, name, arguments) in enumerate(calls):
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        index = first_index + offset
        head_args = args if chunk is None else ""
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": head_args},
        }
        seq: list[Step] = [Delta({"tool_calls": [head]})]
        if chunk is not None:
            if chunk <= 0:
                raise ValueError("chunk must be > 0")
            for start in range(0, len(args), chunk):
                piece = {"index": index, "function": {"arguments": args[start : start + chunk]}}
                seq.append(Delta({"tool_calls": [piece]}))
        sequences.append(seq)
    if interleave:
        steps = [s for group in itertools.zip_longest(*sequences) for s in group if s is not None]
    else:
        steps = [s for seq in sequences for s in seq]
    if finish_reason is not None:
        steps.append(finish(finish_reason))
    return steps


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int | None = None,
    *,
    reasoning_tokens: int | None = None,
    cached_tokens: int | None = None,
    always: bool = False,
) -> Usage:
    """The final ``choices: []`` chunk with ``usage`` (``CompletionUsage``).

    Sent, like OpenAI does, only when the request asked
    ``stream_options: {"include_usage": true}``; ``always`` sends it regardless
    (OpenRouter and some vLLM deployments report usage unasked).
    """
    total = prompt_tokens + completion_tokens if total_tokens is None else total_tokens
    return Usage(prompt_tokens, completion_tokens, total, reasoning_tokens, cached_tokens, always)


_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def http_error(
    status: int,
    message: str | None = None,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> HttpError:
    """An HTTP error before any stream, with OpenAI's JSON error body.

    The body is ``{"error": {"message", "type", "param", "code"}}`` (OpenAI, and
    vLLM/OpenRouter copy it) unless ``body`` is given (any JSON value, or ``str``
    sent as is). ``retry_after`` sets ``Retry-After`` (seconds; a float is written
    as such, which the SDK accepts), ``retry_after_ms`` sets ``retry-after-ms``
    (Azure OpenAI; the SDK prefers it). The SDK retries 408, 409, 429 and >= 500.
    """
    default_message, default_type, default_code = _ERROR_DEFAULTS.get(
        status, ("Error.", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    if body is None:
        body = {
            "error": {
                "message": default_message if message is None else message,
                "type": default_type if type is None else type,
                "param": param,
                "code": default_code if code is None else code,
            }
        }
    out: dict[str, str] = {}
    if retry_after is not None:
        out["retry-after"] = (
            str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        )
    if retry_after_ms is not None:
        out["retry-after-ms"] = str(retry_after_ms)
    out.update(headers or {})
    return HttpError(status, body, tuple(out.items()))


def error_event(
    message: str = "The server had an error while processing your request.",
    *,
    type: str = "server_error",
    code: str | int | None = None,
    event: str | None = None,
) -> ErrorEvent:
    """An error object sent as a stream event after some chunks.

    OpenAI, vLLM and OpenRouter report a failure after the 200 this way
    (``data: {"error": {...}}``); some send ``event: error`` too. The SDK raises
    ``openai.APIError`` (the base class, no status) for either.
    """
    return ErrorEvent({"message": message, "type": type, "param": None, "code": code}, event)


def malformed(data: str = '{"id": "chatcmpl-broken", "choices": [') -> Raw:
    """A ``data:`` line whose payload is not JSON (a truncated chunk from a broken proxy)."""
    return Raw(f"data: {data}\n\n")


def raw(data: str) -> Raw:
    """Exact SSE text (comments ``: keep-alive``, other events, ...)."""
    return Raw(data)


def delay(s: float) -> Delay:
    """Wait ``s`` seconds here; first in a stream, it is the time to first token."""
    return Delay(s)


def pace(tokens_per_s: float | None) -> Pace:
    """Space the following paced chunks (text, reasoning, tool deltas) at ``tokens_per_s``."""
    if tokens_per_s is not None and tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be > 0")
    return Pace(None if tokens_per_s is None else 1.0 / tokens_per_s)


def pace_from(start: float, tokens_per_s: float) -> PaceFrom:
    """Send the following paced chunks on an absolute schedule from ``start`` (``time.time()``)."""
    if tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be > 0")
    return PaceFrom(start, 1.0 / tokens_per_s)


def stall(max_s: float | None = None) -> Stall:
    """Stop sending, keep the connection open until the client disconnects.

    A model or proxy that hangs mid-answer. After ``max_s`` (default 30 s,
    scaled) the server drops the connection.
    """
    return Stall(seconds(30.0) if max_s is None else max_s)


def drop() -> Drop:
    """Drop the connection mid-stream: the body ends without ``[DONE]``.

    A provider or load balancer dying mid-answer; the SDK raises
    ``openai.APIConnectionError`` (httpx's incomplete chunked read).
    """
    return Drop()


def reply(
    content: str,
    *,
    reasoning_text: str | None = None,
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content",
    prompt_tokens: int = 10,
    tokens_per_s: float | None = None,
    finish_reason: str = "stop",
) -> Scenario:
    """A whole plain answer: (reasoning,) ``content`` split in tokens, finish, usage."""
    parts: list[Step] = []
    count = 0
    if reasoning_text:
        pieces = tokens(reasoning_text)
        count += len(pieces)
        parts += reasoning(*pieces, field=reasoning_field)
    pieces = tokens(content)
    count += len(pieces)
    parts += text(*pieces)
    parts += [finish(finish_reason), usage(prompt_tokens, count)]
    return scenario(parts, tokens_per_s=tokens_per_s)


# --- records --------------------------------------------------------------------------

Outcome: TypeAlias = Literal[
    "completed",  # the whole answer was sent
    "disconnected",  # the client went away before the end (a cancelled stream)
    "dropped",  # the script dropped the connection
    "stalled",  # a stall reached its bound and the connection was dropped
    "server_closed",  # the server stopped mid-answer
]


@dataclass(eq=False)
class RecordedRequest:
    """One request the server received, and what became of it."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any
    received_at: float  # time.monotonic()
    scenario: Scenario | None = None
    status: int | None = None
    chunks_sent: int = 0
    first_chunk_at: float | None = None
    outcome: Outcome | None = None
    finished_at: float | None = None
    #: When the server saw the client close the connection (before the answer's end).
    disconnected_at: float | None = None
    events: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the answer is over, one way or another."""
        return self.outcome is not None

    @property
    def abandoned(self) -> bool:
        """Whether the client closed the connection before the end of the answer."""
        return self.outcome == "disconnected"

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def messages(self) -> list[Any]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[Any] | None:
        return self.body.get("tools") if isinstance(self.body, dict) else None


# --- the HTTP server ------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEAD = 64 * 1024


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests served one after another."""

    def __init__(self, server: ReplayServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.lost_at: float | None = None
        self.waiters: set[asyncio.Future[None]] = set()
        self.writable = True
        self.task: asyncio.Task[None] | None = None

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)
        self.task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake_all()

    def eof_received(self) -> bool:
        self.eof = True  # the transport closes itself: connection_lost follows
        self._wake_all()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_at = time.monotonic()
        self.writable = True
        self.server._connections.discard(self)
        self._wake_all()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake_all()

    # helpers
    def _wake_all(self) -> None:
        for fut in self.waiters:
            _wake(fut)

    async def _wait(self, timeout: float | None = None) -> None:
        """Wait for any protocol event (data, eof, loss, writable) or ``timeout``."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiters.add(fut)
        handle = None if timeout is None else self.loop.call_later(timeout, _wake, fut)
        try:
            await fut
        finally:
            self.waiters.discard(fut)
            if handle is not None:
                handle.cancel()

    async def sleep(self, duration: float) -> bool:
        """Sleep unless the client leaves first; whether it is still connected."""
        deadline = self.loop.time() + duration
        while not self.lost:
            left = deadline - self.loop.time()
            if left <= 0:
                return True
            await self._wait(left)
        return False

    async def write(self, data: bytes) -> bool:
        """Write (waiting out back-pressure); whether the client is still connected."""
        while not self.writable and not self.lost:
            await self._wait()
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def _read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if self.eof or self.lost or len(self.buffer) > _MAX_HEAD:
                return None
            await self._wait()
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        request_line, *header_lines = head.split("\r\n")
        try:
            method, target, _version = request_line.split(" ", 2)
        except ValueError:
            return None
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return None  # not supported: httpx sends JSON with a Content-Length
        size = int(headers.get("content-length", "0") or "0")
        while len(self.buffer) < size:
            if self.eof or self.lost:
                return None
            await self._wait()
        body = bytes(self.buffer[:size])
        del self.buffer[:size]
        return method, target, headers, body

    async def _serve(self) -> None:
        try:
            while not self.lost:
                request = await self._read_request()
                if request is None:
                    break
                keep_alive = await self.server._handle(self, *request)
                if not keep_alive:
                    break
        except asyncio.CancelledError:
            pass
        finally:
            self.close()


class ReplayServer:
    """The replay server: queue scenarios, point a client at :attr:`base_url`, read records.

    Runs in the current event loop (:meth:`start` / :meth:`stop`) or in a thread
    with its own loop (:meth:`start_in_thread` / :meth:`stop_thread`); :func:`serve`
    and :func:`serve_in_thread` wrap both. :meth:`queue` and the records are safe
    to use from any thread.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, model: str | None = None):
        self.host = host
        self.port = port
        self.model = model
        self._scenarios: deque[Scenario] = deque()
        self._records: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop: asyncio.Event | None = None
        self._thread_error: BaseException | None = None
        self._ids = itertools.count(1)
        #: Chooses the scenario from the request body before the FIFO is asked
        #: (``None`` from it: the FIFO); see :meth:`route`.
        self._router: Callable[[Mapping[str, Any]], ScenarioLike | None] | None = None

    # -- scripting and records

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``base_url`` of ``openai.AsyncOpenAI``."""
        return f"http://{self.host}:{self.port}/v1"

    def queue(self, *scenarios: ScenarioLike) -> None:
        """Append scenarios (or steps / lists of steps, each one scenario) to the FIFO."""
        built = [as_scenario(s) for s in scenarios]
        with self._lock:
            self._scenarios.extend(built)

    def route(self, router: Callable[[Mapping[str, Any]], ScenarioLike | None] | None) -> None:
        """Script each request from its own JSON body (``None``: back to the FIFO only).

        With many concurrent requests the FIFO hands scenarios out in arrival
        order; a router lets the request say which answer it gets (e.g. a
        benchmark's run names its script in the user message). When the router
        returns ``None`` the FIFO answers as usual.
        """
        self._router = router

    @property
    def pending(self) -> int:
        """Scenarios queued and not yet served."""
        with self._lock:
            return len(self._scenarios)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (chat completions and others), in order."""
        with self._lock:
            return list(self._records)

    @property
    def completions(self) -> list[RecordedRequest]:
        """The ``POST .../chat/completions`` requests."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def unscripted(self) -> list[RecordedRequest]:
        """Chat completion requests that found no scenario queued."""
        return [r for r in self.completions if r.scenario is None]

    def clear(self) -> None:
        """Forget queued scenarios and records."""
        with self._lock:
            self._scenarios.clear()
            self._records.clear()

    async def wait_for(
        self,
        predicate: Callable[[ReplayServer], bool],
        timeout: float | None = None,
        what: str = "condition",
    ) -> None:
        """Poll ``predicate(self)`` from any loop until true; AssertionError after ``timeout``."""
        await wait_until(
            lambda: predicate(self), timeout, interval=0.002, message=f"replay server: {what}"
        )

    def wait_for_sync(
        self,
        predicate: Callable[[ReplayServer], bool],
        timeout: float | None = None,
        what: str = "condition",
    ) -> None:
        """:meth:`wait_for` for synchronous code (the server must run in a thread)."""
        timeout = seconds(5.0) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"replay server: timed out after {timeout:g}s: {what}")
            time.sleep(0.002)

    async def wait_done(self, index: int = -1, timeout: float | None = None) -> RecordedRequest:
        """The ``index``-th chat completion request, once its answer is over."""

        def ready(server: ReplayServer) -> bool:
            found = server.completions
            try:
                return found[index].done
            except IndexError:
                return False

        await self.wait_for(ready, timeout, f"request {index} to end")
        return self.completions[index]

    # -- lifecycle

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: a free one) in the running loop."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, drop every connection, wait for their tasks."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for conn in connections:
            if conn.transport is not None:
                conn.transport.abort()
        tasks = [c.task for c in connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        now = time.monotonic()
        for record in self.requests:
            if record.outcome is None:
                record.outcome, record.finished_at = "server_closed", now

    def start_in_thread(self, timeout: float | None = None) -> None:
        """Run the server in a daemon thread with its own event loop; return once listening."""
        ready = threading.Event()

        async def main() -> None:
            self._thread_stop = asyncio.Event()
            try:
                await self.start()
            finally:
                ready.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self.stop()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                self._thread_error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="replay-llm-server", daemon=True)
        self._thread.start()
        if not ready.wait(seconds(10.0) if timeout is None else timeout):
            raise RuntimeError("replay server thread did not start")
        if self._thread_error is not None:
            raise RuntimeError("replay server thread failed") from self._thread_error

    def stop_thread(self, timeout: float | None = None) -> None:
        """Stop the server started by :meth:`start_in_thread` and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_event = self._loop, self._thread_stop
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(seconds(10.0) if timeout is None else timeout)
        if thread.is_alive():
            raise RuntimeError("replay server thread did not stop")

    # -- serving

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._records.append(request)

    def _routed(self, body: Mapping[str, Any]) -> Scenario | None:
        router = self._router
        if router is None:
            return None
        chosen = router(body)
        return None if chosen is None else as_scenario(chosen)

    def _next(self) -> Scenario | None:
        with self._lock:
            return self._scenarios.popleft() if self._scenarios else None

    async def _handle(
        self, conn: _Connection, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bool:
        """Answer one request; whether the connection may serve another."""
        path = target.split("?", 1)[0]
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(method, path, headers, body, parsed, time.monotonic())
        self._record(record)
        keep_alive = headers.get("connection", "").lower() != "close"

        if path.endswith("/models") and method == "GET":
            data = {
                "object": "list",
                "data": [{"id": self.model or "replay-model", "object": "model", "created": 0}],
            }
            return await self._send_json(conn, record, 200, data, (), keep_alive)
        if not path.endswith("/chat/completions"):
            error = http_error(404, f"Unknown path {path}", code="unknown_url")
            return await self._send_json(conn, record, 404, error.body, (), keep_alive)
        if method != "POST":
            error = http_error(405, f"{method} not allowed")
            return await self._send_json(conn, record, 405, error.body, (), keep_alive)
        if not isinstance(parsed, dict):
            error = http_error(400, "The request body is not a JSON object.")
            return await self._send_json(conn, record, 400, error.body, (), keep_alive)

        script = self._routed(parsed)
        if script is None:
            script = self._next()
        record.scenario = script
        if script is None:
            error = http_error(500, "replay server: no scenario queued", code="unscripted")
            headers_out = (("x-should-retry", "false"),)
            return await self._send_json(conn, record, 500, error.body, headers_out, keep_alive)

        if script.response_delay > 0 and not await conn.sleep(script.response_delay):
            return self._finish(record, "disconnected", conn)
        first = script.steps[0] if script.steps else None
        if isinstance(first, HttpError):
            return await self._send_json(
                conn, record, first.status, first.body, first.headers, keep_alive
            )
        if parsed.get("stream") is True:
            return await self._stream(conn, record, script, parsed, keep_alive)
        return await self._complete(conn, record, script, parsed, keep_alive)

    def _finish(self, record: RecordedRequest, outcome: Outcome, conn: _Connection) -> bool:
        record.outcome = outcome
        record.finished_at = time.monotonic()
        if outcome == "disconnected":
            record.disconnected_at = conn.lost_at or record.finished_at
        return outcome == "completed"

    @staticmethod
    def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(
        self,
        conn: _Connection,
        record: RecordedRequest,
        status: int,
        body: Any,
        extra: Iterable[tuple[str, str]],
        keep_alive: bool,
    ) -> bool:
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("x-request-id", f"req_replay_{len(self._records)}"),
            ("connection", "keep-alive" if keep_alive else "close"),
            *extra,
        ]
        record.status = status
        if not await conn.write(self._head(status, headers) + payload):
            return self._finish(record, "disconnected", conn)
        return self._finish(record, "completed", conn) and keep_alive

    def _envelope(self, script: Scenario, request: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-replay{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": script.model or self.model or str(request.get("model", "replay-model")),
            "system_fingerprint": "fp_replay",
        }

    async def _stream(
        self,
        conn: _Connection,
        record: RecordedRequest,
        script: Scenario,
        request: Mapping[str, Any],
        keep_alive: bool,
    ) -> bool:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        envelope = self._envelope(script, request)
        record.status = 200
        head = self._head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache"),
                ("x-request-id", f"req_replay_{len(self._records)}"),
                ("connection", "keep-alive" if keep_alive else "close"),
            ],
        )
        if not await conn.write(head):
            return self._finish(record, "disconnected", conn)

        async def send(text_: str, counted: bool = True) -> bool:
            data = text_.encode()
            ok = await conn.write(b"%x\r\n%s\r\n" % (len(data), data))
            if ok and counted:
                record.chunks_sent += 1
                if record.first_chunk_at is None:
                    record.first_chunk_at = time.monotonic()
            return ok

        def chunk_json(choices: list[Any], **extra: Any) -> str:
            body = {**envelope, "choices": choices}
            if include_usage:
                body["usage"] = None
            body.update(extra)
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        def choice(delta: Mapping[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "index": 0,
                "delta": dict(delta),
                "logprobs": None,
                "finish_reason": finish_reason,
            }

        interval = None if script.tokens_per_s is None else 1.0 / script.tokens_per_s
        next_at: float | None = None
        role_pending = script.role_chunk
        loop = asyncio.get_running_loop()

        for step in script.steps:
            if conn.lost:
                return self._finish(record, "disconnected", conn)
            if isinstance(step, Delta):
                if role_pending:
                    role_pending = False
                    role = choice({"role": "assistant", "content": ""}, None)
                    if not await send(chunk_json([role])):
                        return self._finish(record, "disconnected", conn)
                if step.paced and interval is not None:
                    now = loop.time()
                    if next_at is None:
                        next_at = now
                    elif next_at > now and not await conn.sleep(next_at - now):
                        return self._finish(record, "disconnected", conn)
                    next_at += interval
                payload = chunk_json([choice(step.delta, step.finish_reason)])
                if not await send(payload):
                    return self._finish(record, "disconnected", conn)
            elif isinstance(step, Usage):
                if not (include_usage or step.always):
                    record.events.append("usage skipped: include_usage not requested")
                    continue
                usage_body: dict[str, Any] = {
                    "prompt_tokens": step.prompt_tokens,
                    "completion_tokens": step.completion_tokens,
                    "total_tokens": step.total_tokens,
                }
                if step.cached_tokens is not None:
                    usage_body["prompt_tokens_details"] = {"cached_tokens": step.cached_tokens}
                if step.reasoning_tokens is not None:
                    usage_body["completion_tokens_details"] = {
                        "reasoning_tokens": step.reasoning_tokens
                    }
                if not await send(chunk_json([], usage=usage_body)):
                    return self._finish(record, "disconnected", conn)
            elif isinstance(step, ErrorEvent):
                prefix = f"event: {step.event}\n" if step.event else ""
                line = prefix + f"data: {json.dumps({'error': dict(step.error)})}\n\n"
                if not await send(line):
                    return self._finish(record, "disconnected", conn)
            elif isinstance(step, Raw):
                if not await send(step.data):
                    return self._finish(record, "disconnected", conn)
            elif isinstance(step, Delay):
                if not await conn.sleep(step.seconds):
                    return self._finish(record, "disconnected", conn)
            elif isinstance(step, Pace):
                interval = step.interval
                next_at = None
            elif isinstance(step, PaceFrom):
                interval = step.interval
                next_at = loop.time() + (step.start - time.time())
            elif isinstance(step, Stall):
                record.events.append("stall")
                if not await conn.sleep(step.max_s):
                    return self._finish(record, "disconnected", conn)
                conn.close()
                return self._finish(record, "stalled", conn)
            elif isinstance(step, Drop):
                conn.close()
                return self._finish(record, "dropped", conn)
            else:  # pragma: no cover - an HttpError is only ever first
                raise TypeError(f"unexpected step {step!r}")

        ok = await send("data: [DONE]\n\n", counted=False) and await conn.write(b"0\r\n\r\n")
        if not ok:
            return self._finish(record, "disconnected", conn)
        return self._finish(record, "completed", conn) and keep_alive

    async def _complete(
        self,
        conn: _Connection,
        record: RecordedRequest,
        script: Scenario,
        request: Mapping[str, Any],
        keep_alive: bool,
    ) -> bool:
        """A non-streamed ChatCompletion assembled from the same steps (delays kept)."""
        content: list[str] = []
        extra_text: dict[str, list[str]] = {}
        calls: dict[int, dict[str, Any]] = {}
        finish_reason: str | None = None
        usage_body: dict[str, Any] | None = None
        for step in script.steps:
            if isinstance(step, Delta):
                delta = step.delta
                finish_reason = step.finish_reason or finish_reason
                for key, value in delta.items():
                    if key == "content" and value:
                        content.append(value)
                    elif key == "tool_calls":
                        for part in value:
                            call = calls.setdefault(
                                part["index"],
                                {"id": None, "type": "function", "function": {"name": None}},
                            )
                            call["id"] = part.get("id") or call["id"]
                            function = part.get("function") or {}
                            if function.get("name"):
                                call["function"]["name"] = function["name"]
                            args = call["function"].get("arguments", "")
                            call["function"]["arguments"] = args + function.get("arguments", "")
                    elif isinstance(value, str) and key not in ("role",):
                        extra_text.setdefault(key, []).append(value)
            elif isinstance(step, Usage):
                usage_body = {
                    "prompt_tokens": step.prompt_tokens,
                    "completion_tokens": step.completion_tokens,
                    "total_tokens": step.total_tokens,
                }
            elif isinstance(step, Delay) and not await conn.sleep(step.seconds):
                return self._finish(record, "disconnected", conn)
            elif isinstance(step, Stall):
                if not await conn.sleep(step.max_s):
                    return self._finish(record, "disconnected", conn)
                conn.close()
                return self._finish(record, "stalled", conn)
            elif isinstance(step, Drop):
                conn.close()
                return self._finish(record, "dropped", conn)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(content) if content or not calls else None,
            "refusal": None,
        }
        for key, values in extra_text.items():
            message[key] = "".join(values)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        envelope = self._envelope(script, request)
        body = {
            **envelope,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if usage_body is not None:
            body["usage"] = usage_body
        return await self._send_json(conn, record, 200, body, (), keep_alive)


# --- running it -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(*, thread: bool = False, model: str | None = None) -> AsyncIterator[ReplayServer]:
    """A running :class:`ReplayServer` on 127.0.0.1 (free port) for the block.

    In the running loop by default; ``thread=True`` runs it in its own thread
    and loop (better for benchmarks: the server's work does not share the
    measured loop).
    """
    server = ReplayServer(model=model)
    if thread:
        await asyncio.to_thread(server.start_in_thread)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop_thread)
    else:
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@contextlib.contextmanager
def serve_in_thread(*, model: str | None = None) -> Iterator[ReplayServer]:
    """A :class:`ReplayServer` running in a background thread, for synchronous code."""
    server = ReplayServer(model=model)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()


__all__ = [
    "Delay",
    "Delta",
    "Drop",
    "ErrorEvent",
    "HttpError",
    "Pace",
    "PaceFrom",
    "Raw",
    "RecordedRequest",
    "ReplayServer",
    "Scenario",
    "Stall",
    "Step",
    "ToolCallSpec",
    "Usage",
    "as_scenario",
    "chunk",
    "delay",
    "drop",
    "error_event",
    "finish",
    "http_error",
    "length",
    "malformed",
    "pace",
    "pace_from",
    "raw",
    "reasoning",
    "reply",
    "scenario",
    "serve",
    "serve_in_thread",
    "stall",
    "stop",
    "text",
    "tokens",
    "tool_calls",
    "usage",
]
