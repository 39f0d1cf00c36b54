"""``agentcast.llm.sse``: the SSE body of a streamed chat completion, read by agentcast.

Unit tests feed hand-written bytes, cut at every position (a line, a CRLF, a
UTF-8 character split across network reads); the rest read real streams of the
replay server, through ``ChatAgent`` and the SDK's ``with_streaming_response``.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from agentcast.llm.sse import (
    Chunk,
    ChunkDelta,
    SseChunkDecoder,
    iter_chunks,
)
from agentcast.llm.stream import StepReader
from tests.conftest import EngineFactory
from tests.llm.replay import (
    ReplayServer,
    drop,
    error_event,
    raw,
    reasoning,
    scenario,
    stop,
    text,
    tool_calls,
    usage,
)
from tests.llm.test_chat_agent import chat, compact, joined, run, types_of


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta_chunk(**delta: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def decode(*pieces: bytes) -> list[Any]:
    """Every chunk of ``pieces`` fed as separate network reads, then the end of the body."""
    decoder = SseChunkDecoder()
    out: list[Any] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
        decoder.check()
    out.extend(decoder.finish())
    decoder.check()
    return out


def contents(chunks: list[Any]) -> list[str | None]:
    return [c.choices[0].delta.content for c in chunks if c.choices]


def every_split(body: bytes) -> list[tuple[bytes, ...]]:
    """``body`` whole, cut in two at every position, and one byte at a time."""
    cuts: list[tuple[bytes, ...]] = [(body,)]
    cuts += [(body[:i], body[i:]) for i in range(1, len(body))]
    cuts.append(tuple(body[i : i + 1] for i in range(len(body))))
    return cuts


BODY = (
    data(delta_chunk(role="assistant", content=""))
    + data(delta_chunk(content="Hé "))
    + b": keep-alive\n\n"
    + data(delta_chunk(content="là"))
    + data(
        {
            "id": "c1",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_any_line_end_and_any_cut_gives_the_same_chunks(line_end: bytes) -> None:
    body = BODY.replace(b"\n", line_end)
    for pieces in every_split(body):
        chunks = decode(*pieces)
        assert contents(chunks) == ["", "Hé ", "là"], pieces
        assert chunks[-1].usage.total_tokens == 5


def test_a_line_split_across_reads_is_joined() -> None:
    body = data(delta_chunk(content="one")) + data(delta_chunk(content="two"))
    middle = body.index(b"one") + 1
    assert contents(decode(body[:middle], body[middle:])) == ["one", "two"]


def test_a_crlf_split_between_two_reads_is_one_line_end() -> None:
    event = data(delta_chunk(content="a")).replace(b"\n", b"\r\n")
    # "data: …\r" | "\n\r\n": the LF after the split CR must not count as a blank line of its own
    first, rest = event[:-3], event[-3:]
    assert first.endswith(b"\r")
    assert rest == b"\n\r\n"
    assert contents(decode(first, rest, event)) == ["a", "a"]


def test_the_done_marker_ends_the_stream_and_the_rest_is_ignored() -> None:
    decoder = SseChunkDecoder()
    got = decoder.feed(data(delta_chunk(content="a")) + b"data: [DONE]\n\n" + b"data: {bad\n\n")
    assert contents(got) == ["a"]
    assert decoder.done
    assert decoder.feed(data(delta_chunk(content="late"))) == []
    assert decoder.finish() == []


def test_a_last_event_without_its_blank_line_is_read() -> None:
    assert contents(decode(data(delta_chunk(content="end"))[:-2])) == ["end"]
    assert contents(decode(data(delta_chunk(content="end"))[:-1])) == ["end"]


def test_comments_ids_retries_and_named_events_are_skipped() -> None:
    body = (
        b": ping\n\n"
        + b"id: 7\nretry: 1000\n"
        + data(delta_chunk(content="x"))
        + b"event: ping\n\n"  # a named event without data: nothing to read
        + b"event: message\n"
        + data(delta_chunk(content="y"))
        + b"unknown: field\n\n"
    )
    assert contents(decode(body)) == ["x", "y"]


def test_data_without_a_space_and_multi_line_data_are_joined_with_newlines() -> None:
    payload = json.dumps(delta_chunk(content="z"), indent=1).encode()
    lines = payload.split(b"\n")
    body = b"data:" + lines[0] + b"\n" + b"".join(b"data: " + ln + b"\n" for ln in lines[1:])
    assert contents(decode(body + b"\n")) == ["z"]


def test_every_field_the_reader_reads_is_decoded_and_others_are_ignored() -> None:
    payload = delta_chunk(
        content="c",
        reasoning_content="r1",
        reasoning="r2",
        refusal=None,
        tool_calls=[
            {
                "index": 1,
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": '{"a"'},
            }
        ],
    )
    payload["choices"][0]["finish_reason"] = "tool_calls"
    payload["choices"][0]["logprobs"] = {"content": []}
    payload["system_fingerprint"] = "fp"
    (chunk,) = decode(data(payload))
    assert isinstance(chunk, Chunk)
    choice = chunk.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "tool_calls")
    assert isinstance(choice.delta, ChunkDelta)
    assert (choice.delta.content, choice.delta.reasoning_content, choice.delta.reasoning) == (
        "c",
        "r1",
        "r2",
    )
    (call,) = choice.delta.tool_calls
    assert (call.index, call.id, call.function.name, call.function.arguments) == (
        1,
        "call_1",
        "f",
        '{"a"',
    )


def test_a_chunk_of_unexpected_types_is_read_leniently_as_the_sdk_reads_it() -> None:
    payload = delta_chunk(content="ok")
    payload["choices"][0]["index"] = "0"  # a string where an int belongs
    (chunk,) = decode(data(payload))
    assert type(chunk).__name__ == "ChatCompletionChunk"
    assert chunk.choices[0].delta.content == "ok"


def test_a_payload_that_is_not_json_is_a_json_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        decode(data(delta_chunk(content="a")), b'data: {"id": "x", "choices": [\n\n')
    assert isinstance(caught.value, json.JSONDecodeError)
    with pytest.raises(json.JSONDecodeError):
        decode(b"data: 42\n\n")  # JSON, but not a chunk


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"error": {"message": "boom", "code": "server_error"}}\n\n',
        b'event: error\ndata: {"error": {"message": "boom", "code": "server_error"}}\n\n',
    ],
)
def test_an_error_payload_raises_the_sdks_api_error(body: bytes) -> None:
    with pytest.raises(openai.APIError) as caught:
        decode(data(delta_chunk(content="a")) + body)
    assert caught.value.message == "boom"
    assert caught.value.body == {"message": "boom", "code": "server_error"}
    assert caught.value.code == "server_error"


def test_chunks_before_an_error_in_the_same_read_come_out_first() -> None:
    decoder = SseChunkDecoder()
    body = data(delta_chunk(content="Half")) + b'data: {"error": {"message": "boom"}}\n\n'
    assert contents(decoder.feed(body)) == ["Half"]
    with pytest.raises(openai.APIError):
        decoder.check()
    assert decoder.done
    with pytest.raises(json.JSONDecodeError):
        SseChunkDecoder().feed(b"data: {bad\n\n")  # nothing before it: raised at once


def test_an_error_event_without_an_error_member_still_raises() -> None:
    with pytest.raises(openai.APIError) as caught:
        decode(b'event: error\ndata: {"detail": "x"}\n\n')
    assert caught.value.message == "An error occurred during streaming"


async def test_the_reader_takes_struct_chunks_reasoning_and_tool_calls() -> None:
    said: list[str] = []
    thought: list[str] = []

    async def say(s: str) -> None:
        said.append(s)

    async def think(s: str) -> None:
        thought.append(s)

    reader = StepReader(say, think)
    body = (
        data(delta_chunk(reasoning_content="hmm"))
        + data(delta_chunk(reasoning="ah"))
        + data(delta_chunk(content="Hi"))
        + data(delta_chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f"}}]))
        + data(delta_chunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
        + data(
            {
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }
        )
    )
    for chunk in decode(body):
        await reader.feed(chunk)
    result = reader.result()
    assert (said, thought, result.text) == (["Hi"], ["hmm", "ah"], "Hi")
    assert [(c.id, c.name, c.arguments) for c in result.calls] == [("c", "f", "{}")]
    assert result.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


# Real streams: the replay server through the SDK's raw streaming response


async def read_all(client: openai.AsyncOpenAI) -> list[Any]:
    async with client.chat.completions.with_streaming_response.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        return [chunk async for chunk in iter_chunks(response)]


async def test_a_replayed_stream_reads_as_structs(
    replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(
            raw(": keep-alive\r\n\r\n"),
            reasoning("thinking"),
            text("Hello", " world"),
            tool_calls([("call_1", "f", '{"a": 1}')]),
            stop(),
            usage(4, 3),
        )
    )
    chunks = await read_all(model_client)
    assert all(isinstance(c, Chunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[-1].usage.total_tokens == 7
    assert (await replay_server.wait_done(0)).done


async def test_a_dropped_connection_is_the_sdks_connection_error(
    replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("a", "b"), drop()))
    with pytest.raises(openai.APIConnectionError):
        await read_all(model_client)


async def test_a_dropped_connection_mid_answer_ends_the_run_as_a_connection_error(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("Half"), drop()))
    _, _, events = await run(make_engine, chat(model_client), text_coalesce_ms=0)
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_error"]
    assert events[-1].data["error_type"] == "LlmConnectionError"
    assert "mid-answer" in events[-1].data["message"]


async def test_an_error_event_before_the_answer_is_a_provider_error(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(error_event("overloaded", event="error"), role_chunk=False))
    _, _, events = await run(make_engine, chat(model_client))
    assert types_of(events) == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmProviderError"
    assert "before the answer" in events[-1].data["message"]
    assert "overloaded" in events[-1].data["message"]


async def test_the_connection_is_reused_after_done(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("one"), stop()), scenario(text("two"), stop()))
    agent = chat(model_client)
    _, _, first = await run(make_engine, agent)
    _, _, second = await run(make_engine, agent)
    assert (joined(first, "text_delta"), joined(second, "text_delta")) == ("one", "two")
    assert all(request.done for request in replay_server.completions)
    # Both requests went over one connection, still open in the client's pool.
    assert len(replay_server._connections) == 1
