"""A cheap reader of a Chat Completions event stream: SSE bytes in, small structs out.

The ``openai`` SDK's own stream builds a pydantic ``ChatCompletionChunk`` for
every chunk, through a generic, validating SSE decoder: about 300 µs of CPU a
chunk, so one core carries ~3,000 chunks/s — 50 answers at 60 tokens/s
saturate it and every token then waits (docs/performance.md, "LLM agents").
What :class:`~agentcast.llm.stream.StepReader` reads of a chunk is a dozen
fields, so this module splits the raw body into lines itself, in bytes, and
decodes each ``data:`` payload with one ``msgspec`` decoder into
:class:`Chunk` and its few nested structs (unknown fields are skipped without
being built).

It keeps the SDK's outcomes, so errors read the same to the user:

- ``data: [DONE]`` ends the stream (the body's rest is drained, so the
  connection can be reused);
- an ``event: error``, or a payload with a truthy ``"error"`` member, raises
  ``openai.APIError`` with the provider's message and the error as ``body``;
- a payload that is not JSON raises ``json.JSONDecodeError`` (as the SDK's
  stream does), which the agent reports as ``LlmBadStream``;
- a payload that is JSON but not of the expected types (a provider's odd
  field) falls back to the SDK's lenient ``ChatCompletionChunk.construct``;
- transport failures while reading become ``openai.APIConnectionError`` /
  ``APITimeoutError``, as the SDK's stream raises them.

SSE itself is read as the WHATWG spec (and the SDK) reads it: comments and
keep-alives (``:``…), ``event:``/``id:``/``retry:`` fields, LF, CR or CRLF line
ends (a CRLF may be split across two network reads), several ``data:`` lines
of one event joined with ``"\\n"``, and a last event without its blank line.
An event with no ``data:`` line (a named ping) is skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec

__all__ = [
    "Chunk",
    "ChunkChoice",
    "ChunkDelta",
    "ChunkFunction",
    "ChunkToolCall",
    "ChunkUsage",
    "SseChunkDecoder",
    "iter_chunks",
]

_DONE: Final = b"[DONE]"
_DEFAULT_ERROR: Final = "An error occurred during streaming"
#: How long the body's end is waited for after ``[DONE]`` (the SDK's own bound).
_DRAIN_S: Final = 0.1


class ChunkFunction(msgspec.Struct, gc=False):
    """``choices[].delta.tool_calls[].function``: a name once, arguments in pieces."""

    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(msgspec.Struct, gc=False):
    """One piece of a tool call; pieces of one call share ``index``."""

    index: int | None = None
    id: str | None = None
    function: ChunkFunction | None = None


class ChunkDelta(msgspec.Struct, gc=False):
    """``choices[].delta``: text, reasoning under either provider's name, tool calls."""

    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(msgspec.Struct, gc=False):
    """One choice of a chunk (only ``index`` 0 is read)."""

    index: int = 0
    delta: ChunkDelta | None = None
    finish_reason: str | None = None


class ChunkUsage(msgspec.Struct, gc=False):
    """The token counts of the chunk that carries them (the last, with no choices)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class Chunk(msgspec.Struct, gc=False):
    """The fields of a ``ChatCompletionChunk`` that the agent reads, and an error member.

    ``error`` is decoded too so that one decoder reads both kinds of payload:
    providers put an error mid-stream as ``data: {"error": {...}}``.
    """

    choices: list[ChunkChoice] | None = None
    usage: ChunkUsage | None = None
    error: Any = None


_decoder: Final = msgspec.json.Decoder(Chunk)
_any_decoder: Final = msgspec.json.Decoder()


class SseChunkDecoder:
    """Turns the raw bytes of one streamed chat completion into chunks, incrementally.

    Feed it the body's bytes as they arrive (:meth:`feed`), then :meth:`finish`
    at the end of the body; both return the chunks completed so far. After
    ``[DONE]``, :attr:`done` is true and the rest is ignored. A failure found
    after some chunks of the same read is kept until :meth:`check`, so those
    chunks reach the user first, as the SDK's stream yields them before it
    raises (and the error then says "mid-answer").

    Args:
        request: The HTTP request, for the ``openai.APIError`` of an error event.
    """

    __slots__ = ("_data", "_event", "_failure", "_pending", "_request", "_skip_lf", "done")

    def __init__(self, request: Any = None) -> None:
        self._request = request
        self._pending = b""
        self._skip_lf = False
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._failure: Exception | None = None
        self.done = False

    def feed(self, data: bytes) -> list[Any]:
        """The chunks whose events end in ``data`` (with what came before it).

        Raises:
            openai.APIError: an error event.
            json.JSONDecodeError: a payload that is not JSON.
        """
        if self.done or not data:
            return []
        if self._skip_lf:
            # The previous read ended in CR: a LF starting this one is its CRLF's end.
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        buffer = self._pending + data if self._pending else data
        cut = max(buffer.rfind(b"\n"), buffer.rfind(b"\r"))
        if cut < 0:
            self._pending = buffer
            return []
        complete = buffer[: cut + 1]
        self._pending = buffer[cut + 1 :]
        self._skip_lf = not self._pending and complete[-1] == 0x0D
        chunks: list[Any] = []
        try:
            for line in complete.splitlines():  # bytes: LF, CR and CRLF only
                self._line(line, chunks)
                if self.done:
                    break
        except Exception as exc:
            if not chunks:
                raise
            self._fail(exc)
        return chunks

    def check(self) -> None:
        """Raise the failure found after the chunks last returned, if any."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        self.done = True  # nothing after a failure is read

    def finish(self) -> list[Any]:
        """The chunks of a last event that had no blank line after it (end of body)."""
        chunks: list[Any] = []
        try:
            if not self.done:
                if self._pending:
                    line, self._pending = self._pending, b""
                    self._line(line, chunks)
                if not self.done:
                    self._line(b"", chunks)
        except Exception as exc:
            if not chunks:
                raise
            self._fail(exc)
        return chunks

    def _line(self, line: bytes, out: list[Any]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                self._data = []
                event, self._event = self._event, None
                self._dispatch(event, data, out)
            else:
                self._event = None  # an event without data (a named ping): nothing to read
            return
        if line[0] == 0x3A:  # ":" a comment, e.g. a keep-alive
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
        # id, retry and unknown fields change nothing that is read here

    def _dispatch(self, event: bytes | None, data: bytes, out: list[Any]) -> None:
        if data.startswith(_DONE):
            self.done = True
            return
        if event == b"error":
            self._raise_error(_loads(data))
        try:
            chunk = _decoder.decode(data)
        except msgspec.ValidationError:
            out.append(self._lenient(data))
            return
        except msgspec.DecodeError:
            raise _not_json(data) from None
        if chunk.error:
            self._raise_error({"error": chunk.error})
        out.append(chunk)

    def _lenient(self, data: bytes) -> Any:
        """A chunk of unexpected types, built as the SDK builds it (no validation)."""
        value = _loads(data)
        if isinstance(value, dict) and value.get("error"):
            self._raise_error(value)
        if not isinstance(value, dict):
            raise _not_json(data)  # JSON, but not a chunk: as unreadable as invalid JSON
        from openai.types.chat import ChatCompletionChunk

        return ChatCompletionChunk.construct(**value)

    def _raise_error(self, payload: Any) -> None:
        """Raise the ``openai.APIError`` the SDK raises for an error payload."""
        import openai

        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            message = _DEFAULT_ERROR
        raise openai.APIError(message, self._request, body=error)


def _loads(data: bytes) -> Any:
    try:
        return _any_decoder.decode(data)
    except msgspec.DecodeError:
        raise _not_json(data) from None


def _not_json(data: bytes) -> json.JSONDecodeError:
    text = data.decode("utf-8", "replace")
    # The SDK's own error for it: describe_provider_error names it LlmBadStream
    # whichever reader found it.
    return json.JSONDecodeError("a stream chunk is not JSON", text, 0)


async def iter_chunks(response: Any) -> AsyncIterator[Any]:
    """The chunks of an SDK streaming response (``with_streaming_response``), as they arrive.

    ``response`` is the SDK's ``AsyncAPIResponse``: its ``iter_bytes()`` is the
    raw body. Transport failures are raised as the SDK's own stream raises
    them, so retries and messages stay the same.

    Raises:
        openai.APIError: an error event; ``APIConnectionError``/``APITimeoutError``
            when the connection fails or times out mid-body.
        json.JSONDecodeError: a payload that is not JSON.
    """
    import openai

    timeouts, transport = _transport_errors()
    request: Any = getattr(getattr(response, "http_response", None), "request", None)
    decoder = SseChunkDecoder(request)
    body = response.iter_bytes()
    try:
        async for data in body:
            for chunk in decoder.feed(data):
                yield chunk
            decoder.check()
            if decoder.done:
                break
        else:
            for chunk in decoder.finish():
                yield chunk
            decoder.check()
            return
        await _drain(body, transport)
    except timeouts as exc:
        raise openai.APITimeoutError(request=request) from exc
    except transport as exc:
        raise openai.APIConnectionError(request=request) from exc
    finally:
        await body.aclose()


async def _drain(body: AsyncIterator[bytes], transport: tuple[type[BaseException], ...]) -> None:
    """Read the body's end after ``[DONE]`` (the chunked terminator), briefly.

    A body read to its end lets the connection go back to the pool instead of
    being closed (as the SDK does); a server that keeps it open gets
    :data:`_DRAIN_S`, then the response is closed anyway. The answer is
    complete by then, so nothing here is an error.
    """
    quiet: tuple[type[BaseException], ...] = (TimeoutError, *transport)
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in body:
                pass
    except quiet:
        pass


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The HTTP layer's timeout and transport exceptions, as the SDK names them."""
    try:
        from openai._httpx2 import request_exceptions, timeout_exceptions
    except ImportError:  # an SDK without that module: httpx's own base classes
        import httpx

        return (httpx.TimeoutException,), (httpx.RequestError,)
    return timeout_exceptions(), request_exceptions()
