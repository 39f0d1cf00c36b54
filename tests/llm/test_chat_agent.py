"""``agentcast.llm.ChatAgent`` end to end: a real engine, the real SDK, the replay server.

Every run goes through ``Engine`` (memory log: the log backends are tested
elsewhere), the model is :mod:`tests.llm.replay` over a real socket, and each
test asserts the run's whole story: every event, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import msgspec
import openai
import pytest

from agentcast.agents import AgentRegistry, RunContext, tool
from agentcast.engine import Engine
from agentcast.events import Event
from agentcast.llm import ChatAgent
from agentcast.settings import LlmSection
from agentcast.store.base import RunRecord
from tests.conftest import EngineFactory
from tests.llm.replay import (
    ReplayServer,
    delay,
    error_event,
    http_error,
    malformed,
    reasoning,
    reply,
    scenario,
    stall,
    stop,
    text,
    tokens,
    tool_calls,
    usage,
)
from tests.runner.helpers import thread_events, wait_run
from tests.utils import seconds

USER = "alice"


@tool
async def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city."""
    return {"city": city, "sky": "clear"}


@tool
async def get_time(city: str) -> str:
    """The local time in a city."""
    return f"12:00 in {city}"


def chat(client: openai.AsyncOpenAI, **kwargs: Any) -> ChatAgent:
    kwargs.setdefault("settings", LlmSection(llm_model="test-model"))
    return ChatAgent("chat", client=client, **kwargs)


async def run(
    make_engine: EngineFactory, agent: Any, message: str = "hi", **settings: Any
) -> tuple[Engine, RunRecord, list[Event]]:
    """Run ``agent`` once in a new thread; the record and the run's events."""
    registry = AgentRegistry()
    registry.register(agent, name="chat")
    engine = await make_engine(registry, **settings)
    ticket = await engine.runner.start_run(USER, "chat", message)
    record = await wait_run(engine, USER, ticket.run_id)
    return engine, record, await thread_events(engine, ticket.thread_id)


def types_of(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def joined(events: list[Event], event_type: str) -> str:
    return "".join(e.data["delta"] for e in events if e.type == event_type)


def compact(types: list[str]) -> list[str]:
    """Runs of the same delta type as one (their count depends on coalescing)."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith("_delta")):
            out.append(t)
    return out


async def test_text_streams_as_text_deltas_and_is_the_final_response(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    answer = "The quick brown fox jumps over the lazy dog."
    replay_server.queue(reply(answer))
    _, record, events = await run(make_engine, chat(model_client, system_prompt="Be brief."))
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_completed"]
    assert joined(events, "text_delta") == answer
    assert events[-1].data["final_response"] == answer == record.output
    assert {e.data["message_id"] for e in events if e.type == "text_delta"} == {
        f"msg_{record.run_id}"
    }
    body = replay_server.completions[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "test-model"
    assert "tools" not in body
    assert replay_server.completions[0].headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_in_either_field_streams_as_thinking_delta(
    make_engine: EngineFactory,
    replay_server: ReplayServer,
    model_client: openai.AsyncOpenAI,
    field: Any,
) -> None:
    replay_server.queue(scenario(reasoning("Let me ", "think.", field=field), text("42"), stop()))
    _, _, events = await run(make_engine, chat(model_client))
    assert compact(types_of(events)) == [
        "agent_started", "thinking_delta", "text_delta", "agent_completed",
    ]  # fmt: skip
    assert joined(events, "thinking_delta") == "Let me think."
    assert events[-1].data["final_response"] == "42"


async def test_two_parallel_chunked_tool_calls_run_and_return_in_call_order(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    both_started = asyncio.Event()
    started: list[str] = []

    async def together(city: str) -> None:
        """Wait until both calls are running: they run at once, not one by one."""
        started.append(city)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), seconds(2.0))

    @tool(name="weather")
    async def weather(city: str) -> dict[str, Any]:
        """The weather in a city."""
        await together(city)
        return {"city": city, "sky": "clear"}

    @tool(name="get_time")
    async def local_time(city: str) -> str:
        """The local time in a city."""
        await together(city)
        return f"12:00 in {city}"

    replay_server.queue(
        scenario(
            text("Checking."),
            tool_calls(
                [
                    ("call_a", "weather", {"city": "Paris"}),
                    ("call_b", "get_time", {"city": "Oslo"}),
                ],
                chunk=5,
            ),
        ),
        reply("Clear in Paris, noon in Oslo."),
    )
    agent = chat(model_client, tools=[weather, local_time])
    _, record, events = await run(make_engine, agent)
    assert compact(types_of(events)) == [
        "agent_started", "text_delta",
        "tool_executing", "tool_executing", "tool_completed", "tool_completed",
        "text_delta", "agent_completed",
    ]  # fmt: skip
    executing = {e.data["tool_call_id"]: e.data for e in events if e.type == "tool_executing"}
    completed = {e.data["tool_call_id"]: e.data for e in events if e.type == "tool_completed"}
    assert executing == {
        "call_a": {
            "tool_call_id": "call_a",
            "tool_name": "weather",
            "parameters": {"city": "Paris"},
        },
        "call_b": {
            "tool_call_id": "call_b",
            "tool_name": "get_time",
            "parameters": {"city": "Oslo"},
        },
    }
    assert completed["call_a"]["results"] == {"city": "Paris", "sky": "clear"}
    assert completed["call_b"]["results"] == "12:00 in Oslo"
    assert {d["status"] for d in completed.values()} == {"success"}
    # The final response is the last step's text; both steps were streamed.
    assert record.output == "Clear in Paris, noon in Oslo."
    assert joined(events, "text_delta") == "Checking.Clear in Paris, noon in Oslo."
    first, second = replay_server.completions
    assert [t["function"]["name"] for t in first.body["tools"]] == ["weather", "get_time"]
    assert first.body["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert second.body["messages"] == [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a",
         "content": json.dumps({"city": "Paris", "sky": "clear"})},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00 in Oslo"},
    ]  # fmt: skip


async def test_bad_arguments_and_unknown_tools_go_back_to_the_model_as_errors(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(
            tool_calls(
                [
                    ("call_1", "get_weather", '{"city": "Par'),
                    ("call_2", "launch_rockets", {}),
                    ("call_3", "get_weather", {"town": "Paris"}),
                ]
            )
        ),
        reply("Sorry, I could not check."),
    )
    _, record, events = await run(make_engine, chat(model_client, tools=[get_weather]))
    # The three calls run concurrently: their pairs may interleave (each pair is
    # checked in order by thread_events), the answer follows them all.
    types = compact(types_of(events))
    assert types[0] == "agent_started"
    assert sorted(types[1:7]) == ["tool_completed"] * 3 + ["tool_executing"] * 3
    assert types[7:] == ["text_delta", "agent_completed"]
    completed = {e.data["tool_call_id"]: e.data for e in events if e.type == "tool_completed"}
    assert sorted(completed) == ["call_1", "call_2", "call_3"]
    assert {d["status"] for d in completed.values()} == {"error"}
    assert "not valid JSON" in completed["call_1"]["error"]
    assert "unknown tool 'launch_rockets'" in completed["call_2"]["error"]
    assert "available: get_weather" in completed["call_2"]["error"]
    assert "town" in completed["call_3"]["error"]
    assert record.output == "Sorry, I could not check."
    tool_messages = replay_server.completions[1].messages[2:]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_1", "call_2", "call_3"]
    for message in tool_messages:
        assert message["content"] == f"Error: {completed[message['tool_call_id']]['error']}"


async def test_max_steps_ends_the_run_with_its_own_error(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(tool_calls([("call_1", "get_time", {"city": "Oslo"})])),
        scenario(tool_calls([("call_2", "get_time", {"city": "Rome"})])),
    )
    _, _, events = await run(make_engine, chat(model_client, tools=[get_time], max_steps=2))
    assert types_of(events) == [
        "agent_started", "tool_executing", "tool_completed", "agent_error",
    ]  # fmt: skip
    assert events[-1].data["error_type"] == "LlmMaxSteps"
    assert "after 2 model calls" in events[-1].data["message"]
    assert len(replay_server.completions) == 2


async def test_usage_of_every_step_is_summed_and_none_when_never_sent(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    seen: list[Any] = []
    inner = chat(model_client, tools=[get_time])

    async def counted(ctx: RunContext) -> str:
        answer = await inner.run(ctx)
        seen.append(ctx.usage)
        return answer

    replay_server.queue(
        scenario(tool_calls([("call_1", "get_time", {"city": "Oslo"})]), usage(100, 7)),
        scenario(text("Noon."), stop(), usage(120, 3)),
        scenario(text("No usage here."), stop()),
    )
    registry = AgentRegistry()
    registry.register(counted, name="chat", tools=[get_time])
    engine = await make_engine(registry)
    for _ in range(2):
        ticket = await engine.runner.start_run(USER, "chat", "time?")
        await wait_run(engine, USER, ticket.run_id)
    assert seen == [{"prompt_tokens": 220, "completion_tokens": 10, "total_tokens": 230}, None]


async def test_429_is_retried_as_retry_after_says_before_any_output(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(http_error(429, retry_after=0.2), reply("ok"))
    _, record, events = await run(make_engine, chat(model_client, max_retries=1))
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_completed"]
    assert record.output == "ok"
    first, second = replay_server.completions
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.2 * 0.9
    assert first.body == second.body


async def test_rate_limit_after_every_retry_is_its_own_error(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(http_error(429, retry_after_ms=10), http_error(429, retry_after_ms=10))
    _, _, events = await run(make_engine, chat(model_client, max_retries=1))
    assert types_of(events) == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmRateLimited"
    assert "HTTP 429, rate_limit_exceeded" in events[-1].data["message"]
    assert "after 2 attempts" in events[-1].data["message"]


async def test_a_provider_error_after_output_ends_the_run_and_nothing_is_repeated(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    secret = "sk-test-secret-key-0123456789"
    replay_server.queue(
        scenario(
            text("Half ", "an answer"),
            delay(seconds(0.05)),  # the text is out before the error
            error_event(f"upstream failed at /srv/models/x.py with key {secret}"),
        ),
    )  # a retry would find no scenario: the fixture fails the test
    _, _, events = await run(make_engine, chat(model_client, max_retries=2), text_coalesce_ms=0)
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_error"]
    assert joined(events, "text_delta") == "Half an answer"
    error = events[-1].data
    assert error["error_type"] == "LlmProviderError"
    assert "mid-answer" in error["message"]
    assert secret not in error["message"]
    assert "/srv/models" not in error["message"]
    assert len(replay_server.completions) == 1


async def test_the_key_never_reaches_the_user_in_an_error(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    key = model_client.api_key
    replay_server.queue(http_error(401, f"Incorrect API key provided: {key}"))
    _, _, events = await run(make_engine, chat(model_client))
    assert types_of(events) == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmProviderError"
    assert "HTTP 401, invalid_api_key" in events[-1].data["message"]
    assert key not in events[-1].data["message"]


async def test_first_token_timeout(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    late = scenario(delay(seconds(5)), text("late"), stop(), role_chunk=False)
    replay_server.queue(late, late)
    agent = chat(model_client, first_token_timeout_s=seconds(0.2), max_retries=1)
    _, _, events = await run(make_engine, agent)
    assert types_of(events) == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmFirstTokenTimeout"
    assert "llm_first_token_timeout_s" in events[-1].data["message"]
    assert "after 2 attempts" in events[-1].data["message"]
    for attempt in (0, 1):
        assert (await replay_server.wait_done(attempt, timeout=seconds(2.0))).abandoned


async def test_a_first_token_timeout_is_retried_and_the_answer_sent_once(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(
        scenario(delay(seconds(5)), text("late"), stop(), role_chunk=False), reply("in time")
    )
    agent = chat(model_client, first_token_timeout_s=seconds(0.3), max_retries=1)
    _, record, events = await run(make_engine, agent)
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_completed"]
    assert joined(events, "text_delta") == record.output == "in time"
    first, second = replay_server.completions
    assert first.abandoned
    assert first.body == second.body


async def test_an_answer_cut_at_max_tokens_completes_and_says_so(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(reply("The answer is cut", finish_reason="length"))
    _, record, events = await run(make_engine, chat(model_client))
    assert compact(types_of(events)) == [
        "agent_started",
        "text_delta",
        "agent_thinking",
        "agent_completed",
    ]
    assert joined(events, "text_delta") == record.output == "The answer is cut"
    assert "output limit (max_tokens)" in events[-2].data["reasoning"]


async def test_tool_calls_cut_at_max_tokens_are_not_run(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    ran: list[str] = []

    @tool(name="get_weather")
    async def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return "clear"

    replay_server.queue(
        scenario(
            tool_calls([("call_1", "get_weather", '{"city": "Par')], finish_reason="length"),
            usage(5, 5),
        )
    )
    _, _, events = await run(make_engine, chat(model_client, tools=[weather]))
    assert types_of(events) == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmOutputTruncated"
    assert ran == []


async def test_chunk_timeout_after_a_stall(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("Hello"), stall()))
    agent = chat(model_client, chunk_timeout_s=seconds(0.2))
    _, _, events = await run(make_engine, agent)
    assert compact(types_of(events)) == ["agent_started", "text_delta", "agent_error"]
    assert joined(events, "text_delta") == "Hello"
    assert events[-1].data["error_type"] == "LlmChunkTimeout"
    assert (await replay_server.wait_done(0, timeout=seconds(2.0))).abandoned


async def test_cancel_closes_the_model_stream_at_once(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text(*tokens("one two three four five six")), tokens_per_s=5))
    registry = AgentRegistry()
    registry.register(chat(model_client), name="chat")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(USER, "chat", "count")
    await replay_server.wait_for(lambda s: bool(s.completions) and s.completions[0].chunks_sent > 1)
    await engine.runner.cancel(USER, ticket.run_id)
    await wait_run(engine, USER, ticket.run_id)
    request = await replay_server.wait_done(0, timeout=seconds(1.0))
    assert request.abandoned
    events = await thread_events(engine, ticket.thread_id)
    assert events[-1].type == "agent_cancelled"


async def test_a_malformed_chunk_is_a_bad_stream(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(scenario(text("Hi"), malformed()))
    _, _, events = await run(make_engine, chat(model_client))
    assert events[-1].data["error_type"] == "LlmBadStream"
    assert len(replay_server.completions) == 1


async def test_history_is_sent_before_the_message(
    replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    # Written against the ``ctx.history`` contract (chat-completion mappings),
    # with an explicit history: the engine's filling of it is tested with it.
    history: list[Mapping[str, Any]] = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    emitted: list[tuple[str, dict[str, Any]]] = []

    async def emit(event_type: str, data: Mapping[str, Any]) -> None:
        emitted.append((event_type, dict(data)))

    ctx = RunContext(
        run_id="run_2", thread_id="thr_1", user_id=USER, agent="chat",
        message="What is my name?", emit=emit, history=history,
    )  # fmt: skip
    replay_server.queue(reply("Ada."))
    answer = await chat(model_client, system_prompt="S").run(ctx)
    await ctx.aclose()
    assert answer == "Ada."
    assert replay_server.completions[0].messages == [
        {"role": "system", "content": "S"},
        *history,
        {"role": "user", "content": "What is my name?"},
    ]
    assert "".join(d["delta"] for t, d in emitted if t == "text_delta") == "Ada."
    assert ctx.usage == {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    assert msgspec.UNSET is not ctx.usage


#: A thread's earlier turn with a tool call, as ``ctx.history`` holds it.
TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky":"clear"}'},
    {"role": "assistant", "content": "Clear in Paris."},
]


@pytest.mark.parametrize("offers_tools", [True, False])
async def test_tool_calls_in_the_history_go_only_to_a_request_that_offers_tools(
    replay_server: ReplayServer, model_client: openai.AsyncOpenAI, offers_tools: bool
) -> None:
    async def emit(event_type: str, data: Mapping[str, Any]) -> None:
        return None

    ctx = RunContext(
        run_id="run_2", thread_id="thr_1", user_id=USER, agent="chat",
        message="And tomorrow?", emit=emit, history=TOOL_TURN,
    )  # fmt: skip
    replay_server.queue(reply("Rain."))
    agent = chat(model_client, tools=[get_weather] if offers_tools else [])
    assert await agent.run(ctx) == "Rain."
    await ctx.aclose()
    sent = replay_server.completions[0].messages
    if offers_tools:
        assert sent == [*TOOL_TURN, {"role": "user", "content": "And tomorrow?"}]
    else:  # providers refuse calls to tools the request does not list: the text stays
        assert sent == [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Clear in Paris."},
            {"role": "user", "content": "And tomorrow?"},
        ]


def test_the_key_never_shows_in_repr() -> None:
    agent = ChatAgent("c", api_key="sk-very-secret-000000000000", settings=LlmSection())
    assert "sk-very-secret" not in repr(agent)
    assert repr(agent) == "<ChatAgent name='c' model='gpt-4o-mini' base_url=None>"


async def test_agent_completed_carries_the_runs_usage_sub_runs_included(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    """The total of every model call of the run tree; null when the provider sent none."""
    helper = chat(model_client)

    async def lead(ctx: RunContext) -> str:
        ctx.report_usage({"prompt_tokens": 5, "completion_tokens": 1})
        return await ctx.delegate("helper", "summarise")

    replay_server.queue(
        scenario(text("Short."), stop(), usage(40, 2)),
        scenario(text("No usage."), stop()),
    )
    registry = AgentRegistry()
    registry.register(helper, name="helper")
    registry.register(lead, name="lead")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(USER, "lead", "go")
    await wait_run(engine, USER, ticket.run_id)
    events = await thread_events(engine, ticket.thread_id)
    completed = {e.run_id: e.data for e in events if e.type == "agent_completed"}
    assert completed[ticket.run_id]["usage"] == {
        "prompt_tokens": 45,
        "completion_tokens": 3,
        "total_tokens": 48,
    }
    (sub,) = [run_id for run_id in completed if run_id != ticket.run_id]
    assert completed[sub]["usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
    }
    tokens = engine.bridge.metrics.registry.get_sample_value
    labels = {"agent": "helper", "model": "test-model"}
    # Counted once, where the model was called, not again in the parent's total.
    assert tokens("agentcast_llm_tokens_total", {**labels, "kind": "prompt"}) == 40
    assert tokens("agentcast_llm_tokens_total", {**labels, "kind": "completion"}) == 2
    assert (
        tokens(
            "agentcast_llm_tokens_total", {"agent": "lead", "model": "test-model", "kind": "prompt"}
        )
        is None
    )
    _, _, alone = await run(make_engine, chat(model_client))
    assert alone[-1].type == "agent_completed"
    assert alone[-1].data["usage"] is None  # the provider sent none


async def test_the_model_hands_a_task_to_another_agent_as_a_nested_sub_run(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    async def shout(ctx: RunContext) -> str:
        await ctx.think("shouting")
        return ctx.message.upper()

    lead = chat(model_client, agents={"shout": "turns a text into capitals."})
    replay_server.queue(
        scenario(tool_calls([("call_s", "shout", {"message": "hello there"})])),
        reply("They said HELLO THERE."),
    )
    registry = AgentRegistry()
    registry.register(lead, name="chat")
    registry.register(shout, name="shout")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(USER, "chat", "shout hello there")
    assert (await wait_run(engine, USER, ticket.run_id)).output == "They said HELLO THERE."
    events = await thread_events(engine, ticket.thread_id)  # contiguous, whole lifecycles
    lead_run = ticket.run_id
    (sub,) = {e.run_id for e in events if e.parent_run_id == lead_run}
    story = [(e.type, "lead" if e.run_id == lead_run else "sub") for e in events]
    assert compact([f"{t}/{who}" for t, who in story]) == [
        "agent_started/lead",
        "tool_executing/lead",
        "agent_started/sub",
        "agent_thinking/sub",
        "agent_completed/sub",
        "tool_completed/lead",
        "text_delta/lead",
        "agent_completed/lead",
    ]
    executing = next(e for e in events if e.type == "tool_executing")
    assert (executing.data["tool_call_id"], executing.data["tool_name"]) == ("call_s", "shout")
    completed = next(e for e in events if e.type == "tool_completed")
    assert completed.data["status"] == "success"
    assert completed.data["results"] == "HELLO THERE"
    offered = replay_server.completions[0].body["tools"]
    assert [t["function"]["name"] for t in offered] == ["shout"]
    assert "capitals" in offered[0]["function"]["description"]
    assert offered[0]["function"]["parameters"]["required"] == ["message"]
    answer = replay_server.completions[1].body["messages"][-1]
    assert answer == {"role": "tool", "tool_call_id": "call_s", "content": "HELLO THERE"}
    assert sub != lead_run
