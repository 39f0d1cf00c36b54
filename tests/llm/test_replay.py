"""The replay server against the real ``openai`` SDK, over a real socket.

These tests also pin the SDK behaviours the LLM agent relies on: how extra
delta fields are read, which exceptions faults raise, how Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.llm.replay import (
    ReplayServer,
    ToolCallSpec,
    delay,
    drop,
    error_event,
    http_error,
    length,
    malformed,
    pace,
    reasoning,
    reply,
    scenario,
    serve,
    serve_in_thread,
    stall,
    stop,
    text,
    tokens,
    tool_calls,
    usage,
)
from tests.utils import seconds

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def client_for(server: ReplayServer, max_retries: int) -> openai.AsyncOpenAI:
    """The SDK's client; its default transport, but without loading the CA bundle.

    ``AsyncOpenAI()`` builds an SSL context at construction (~0.1 s); over plain
    http it is never used, so ``verify=False`` only makes the tests faster.
    """
    return openai.AsyncOpenAI(
        base_url=server.base_url,
        api_key="test-key",
        max_retries=max_retries,
        timeout=seconds(10.0),
        http_client=openai.DefaultAsyncHttpxClient(verify=False),
    )


@pytest.fixture
async def client(replay_server: ReplayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client_for(replay_server, max_retries=0) as c:
        yield c


async def collect(client: openai.AsyncOpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    kwargs.setdefault("model", "test-model")
    kwargs.setdefault("messages", MESSAGES)
    stream = await client.chat.completions.create(stream=True, **kwargs)
    return [c async for c in stream]


async def drain(stream: Any, into: list[str]) -> None:
    """Read ``stream`` to its end (or error), appending each chunk's content to ``into``."""
    async for c in stream:
        into.append(c.choices[0].delta.content or "" if c.choices else "")


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- streams ----------------------------------------------------------------------------


async def test_text_stream_yields_the_exact_text(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("Hel", "lo, ", "wor", "ld!"), stop()))
    chunks = await collect(client, max_tokens=50, temperature=0.2)

    assert content_of(chunks) == "Hello, world!"
    # OpenAI's shape: a role chunk first, one chunk per piece, an empty closing delta.
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["stop"]
    assert chunks[-1].choices[0].delta.content is None
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].model == "test-model"

    # The client may read [DONE] before the server's thread records the outcome.
    request = await replay_server.wait_done(0)
    assert len(replay_server.completions) == 1
    assert request.outcome == "completed"
    assert request.body["messages"] == MESSAGES
    assert request.body["model"] == "test-model"
    assert request.body["stream"] is True
    assert request.body["max_tokens"] == 50
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.chunks_sent == 6


async def test_reasoning_fields_are_extra_attributes_of_the_delta(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(reasoning("Let me ", "think.", field="reasoning_content"), text("42"), stop()),
        scenario(reasoning("Hmm", "...", field="reasoning"), text("43"), stop()),
    )
    for field, expected, answer in (
        ("reasoning_content", "Let me think.", "42"),
        ("reasoning", "Hmm...", "43"),
    ):
        chunks = await collect(client)
        deltas = [c.choices[0].delta for c in chunks]
        # The SDK's models allow extra fields: undeclared keys are kept as is, read
        # through model_extra (a dict, None-safe with .get) or as attributes.
        via_extra = "".join((d.model_extra or {}).get(field) or "" for d in deltas)
        via_attr = "".join(getattr(d, field, None) or "" for d in deltas)
        assert via_extra == via_attr == expected
        assert content_of(chunks) == answer
        # A field the chunk did not carry is absent, not None.
        assert not hasattr(deltas[-1], field)


async def test_parallel_chunked_tool_calls_reassemble_by_index(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    calls: list[ToolCallSpec] = [
        ("call_a", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("call_b", "get_time", '{"tz": "Europe/Paris"}'),
        ("call_c", "no_such_tool", {"x": [1, 2, 3]}),  # unknown to the client: just a name
    ]
    replay_server.queue(scenario(text("Checking."), tool_calls(calls, chunk=5)))
    tools = [
        {
            "type": "function",
            "function": {"name": name, "parameters": {"type": "object"}},
        }
        for name in ("get_weather", "get_time")
    ]
    chunks = await collect(client, tools=tools, tool_choice="auto")

    assembled: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            order.append(tc.index)
            slot = assembled.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
                assert tc.type == "function"
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
    assert order[:3] == [0, 1, 2]  # interleaved: every call opens before any finishes
    assert order != sorted(order)
    result = [assembled[i] for i in sorted(assembled)]
    assert [(r["id"], r["name"]) for r in result] == [(c[0], c[1]) for c in calls]
    assert [json.loads(r["arguments"]) for r in result] == [
        {"city": "Paris", "unit": "celsius"},
        {"tz": "Europe/Paris"},
        {"x": [1, 2, 3]},
    ]
    assert content_of(chunks) == "Checking."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    request = replay_server.completions[0]
    assert request.tools == tools
    assert request.body["tool_choice"] == "auto"


async def test_usage_chunk_comes_last_only_when_include_usage_is_asked(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    script = scenario(text("a", "b"), stop(), usage(10, 2, reasoning_tokens=1))
    replay_server.queue(script, script)

    with_usage = await collect(client, stream_options={"include_usage": True})
    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 2)
    assert last.usage.total_tokens == 12
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.reasoning_tokens == 1
    assert all(c.usage is None for c in with_usage[:-1])
    assert with_usage[-2].choices[0].finish_reason == "stop"

    without = await collect(client)
    assert all(c.choices and c.usage is None for c in without)
    assert without[-1].choices[0].finish_reason == "stop"

    first, second = replay_server.completions
    assert first.body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in second.body


async def test_finish_length_and_time_to_first_token(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    ttft = seconds(0.2)
    replay_server.queue(scenario(delay(ttft), text("cut"), length()))
    start = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    headers_at = time.monotonic()
    chunks = [c async for c in stream]
    assert headers_at - start < ttft  # the delay comes after the status and headers
    request = replay_server.completions[0]
    assert request.first_chunk_at is not None
    assert request.first_chunk_at - request.received_at >= ttft * 0.9
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_paced_stream_keeps_roughly_its_tokens_per_second(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    rate, count = 100.0, 30
    replay_server.queue(scenario(text(*["tok "] * count), stop(), tokens_per_s=rate))
    start = time.monotonic()
    chunks = await collect(client)
    elapsed = time.monotonic() - start
    assert content_of(chunks) == "tok " * count
    expected = (count - 1) / rate  # the first token is not delayed
    assert elapsed >= expected * 0.9
    assert elapsed < expected + seconds(0.5)

    # A pace() step changes the pace mid-stream; pace(None) stops it.
    replay_server.queue(scenario(text("fast"), pace(20), text("a", "b", "c"), pace(None), stop()))
    start = time.monotonic()
    await collect(client)
    assert time.monotonic() - start >= 2 / 20 * 0.9


async def test_fifty_concurrent_paced_streams(replay_server: ReplayServer) -> None:
    streams, count, rate = 50, 20, 100.0
    for i in range(streams):
        replay_server.queue(reply(" ".join(f"w{i}" for _ in range(count)), tokens_per_s=rate))
    async with client_for(replay_server, max_retries=0) as c:
        start = time.monotonic()
        results = await asyncio.gather(*(collect(c) for _ in range(streams)))
        elapsed = time.monotonic() - start
    texts = sorted(content_of(r) for r in results)
    assert texts == sorted(" ".join(f"w{i}" for _ in range(count)) for i in range(streams))
    assert elapsed < (count - 1) / rate + seconds(2.0)
    for index in range(streams):
        assert (await replay_server.wait_done(index)).outcome == "completed"


# --- HTTP errors before the stream --------------------------------------------------------


async def test_429_retry_after_ms_is_honoured_and_retried(replay_server: ReplayServer) -> None:
    # retry-after-ms wins over Retry-After (which alone would cost a second).
    replay_server.queue(http_error(429, retry_after=1, retry_after_ms=50), reply("ok"))
    async with client_for(replay_server, max_retries=1) as c:
        start = time.monotonic()
        chunks = await collect(c)
        elapsed = time.monotonic() - start
    assert content_of(chunks) == "ok"
    first, second = replay_server.completions
    assert first.status == 429
    assert second.status == 200
    assert first.body == second.body
    assert first.headers["x-stainless-retry-count"] == "0"
    assert second.headers["x-stainless-retry-count"] == "1"
    assert 0.05 * 0.9 <= second.received_at - first.received_at < seconds(0.9)
    assert elapsed < seconds(0.9)


async def test_429_retry_after_seconds_may_be_a_float(replay_server: ReplayServer) -> None:
    wait = 0.3
    replay_server.queue(http_error(429, retry_after=wait), reply("ok"))
    async with client_for(replay_server, max_retries=1) as c:
        assert content_of(await collect(c)) == "ok"
    first, second = replay_server.completions
    assert second.received_at - first.received_at >= wait * 0.9


async def test_429_without_retries_raises_rate_limit_error(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(http_error(429, retry_after=1))
    with pytest.raises(openai.RateLimitError) as caught:
        await collect(client)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.response.headers["retry-after"] == "1"
    assert isinstance(error.body, dict)  # the SDK unwraps {"error": {...}}
    assert error.body["code"] == "rate_limit_exceeded"
    assert len(replay_server.completions) == 1


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (400, openai.BadRequestError),
    ],
)
async def test_http_errors_raise_their_sdk_exception(
    replay_server: ReplayServer,
    client: openai.AsyncOpenAI,
    status: int,
    exception: type[openai.APIStatusError],
) -> None:
    replay_server.queue(http_error(status))
    with pytest.raises(exception) as caught:
        await collect(client)
    assert caught.value.status_code == status
    assert replay_server.completions[0].status == status


# --- faults mid-stream ------------------------------------------------------------------


async def test_malformed_chunk_raises_json_decode_error(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("a"), malformed(), text("b"), stop()))
    received: list[str] = []
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    # The SDK json.loads each data line unguarded: a bare json.JSONDecodeError
    # (a ValueError), NOT an openai.APIError.
    with pytest.raises(json.JSONDecodeError):
        await drain(stream, received)
    await stream.close()
    assert "".join(received) == "a"


async def test_error_event_mid_stream_raises_api_error(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    for event in (None, "error"):
        replay_server.queue(
            scenario(text("par"), error_event("model crashed", code="overloaded", event=event))
        )
        received: list[str] = []
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as caught:
            await drain(stream, received)
        await stream.close()
        assert type(caught.value) is openai.APIError  # no status: the response was a 200
        assert caught.value.message == "model crashed"
        assert caught.value.code == "overloaded"
        assert "".join(received) == "par"


async def test_dropped_connection_mid_stream_raises_api_connection_error(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("a", "b"), drop()))
    received: list[str] = []
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, received)
    assert "".join(received) == "ab"
    # Mid-stream failures are never retried by the SDK (max_retries is for the request).
    assert len(replay_server.completions) == 1
    assert (await replay_server.wait_done(0)).outcome == "dropped"


async def test_closing_a_stalled_stream_is_seen_by_the_server_at_once(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("thinking"), stall()))
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first = await anext(aiter(stream))
    assert first.choices[0].delta.role == "assistant"
    await anext(aiter(stream))  # "thinking"; then nothing comes
    request = replay_server.completions[0]
    assert not request.done
    closed_at = time.monotonic()
    await stream.close()
    request = await replay_server.wait_done(0, timeout=seconds(2.0))
    assert request.abandoned
    assert request.outcome == "disconnected"
    assert request.disconnected_at is not None
    assert request.disconnected_at - closed_at < seconds(0.5)


async def test_a_cancelled_consumer_task_abandons_the_stream(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text(*tokens("one two three four")), tokens_per_s=5))

    async def consume() -> None:
        async with await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True
        ) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await replay_server.wait_for(lambda s: bool(s.completions) and s.completions[0].chunks_sent > 1)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = await replay_server.wait_done(0, timeout=seconds(2.0))
    assert request.abandoned
    assert request.disconnected_at is not None
    assert request.disconnected_at - cancelled_at < seconds(0.5)


async def test_a_stall_bound_drops_the_connection(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("a"), stall(max_s=seconds(0.1))))
    with pytest.raises(openai.APIConnectionError):
        await collect(client)
    assert (await replay_server.wait_done(0)).outcome == "stalled"


# --- other modes ------------------------------------------------------------------------


async def test_non_streamed_completion_from_the_same_script(
    replay_server: ReplayServer, client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(
            reasoning("hm"),
            text("Let me check."),
            tool_calls([("call_1", "get_weather", {"city": "Paris"})], chunk=3),
            usage(7, 5),
        )
    )
    completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    message = completion.choices[0].message
    assert message.content == "Let me check."
    assert (message.model_extra or {}).get("reasoning_content") == "hm"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 12


async def test_serve_in_the_running_loop_and_unscripted_requests() -> None:
    async with serve() as server, client_for(server, max_retries=2) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await collect(c)
        # Answered with x-should-retry: false: the SDK does not retry it.
        assert caught.value.code == "unscripted"
        assert len(server.unscripted) == 1
        models = await c.models.list()
        assert [m.id async for m in models] == ["replay-model"]


def test_sync_client_against_a_server_in_a_thread() -> None:
    with (
        serve_in_thread() as server,
        openai.OpenAI(
            base_url=server.base_url, api_key="k", max_retries=0, timeout=seconds(10.0)
        ) as c,
    ):
        server.queue(reply("Hello from a thread"))
        stream = c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == (
            "Hello from a thread"
        )
        server.wait_for_sync(lambda s: s.completions[0].done)
        assert server.completions[0].outcome == "completed"


def test_tokens_join_back() -> None:
    for sample in ("Hello, world!", "  lead and trail  ", "one", ""):
        assert "".join(tokens(sample)) == sample
    with pytest.raises(ValueError, match="only step"):
        scenario(text("a"), http_error(500))
