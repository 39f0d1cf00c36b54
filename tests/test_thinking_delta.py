"""``thinking_delta`` and usage on the agent side: ``RunContext.think_stream``, ``report_usage``.

Streamed reasoning is coalesced like text and kept in the order the agent
produced it relative to text and every other event of the context; usage
reports add up into what ``agent_completed.usage`` carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from agentcast.agents import AgentSettings, RunContext, ToolError, tool
from agentcast.events import encode_payload
from tests.utils import seconds, wait_until

Emitted = list[tuple[str, dict[str, Any]]]


def make_ctx(emitted: Emitted, coalesce_ms: float = 10_000) -> RunContext:
    """A context whose window never elapses in a test: only ordering flushes."""

    async def emit(event_type: str, data: Mapping[str, Any]) -> None:
        encode_payload(event_type, data)  # every event is valid on the wire
        emitted.append((event_type, dict(data)))

    return RunContext(
        run_id="run_1", thread_id="thr_1", user_id="u", agent="a", message="m", emit=emit,
        settings=AgentSettings(text_coalesce_ms=coalesce_ms),
    )  # fmt: skip


async def test_reasoning_and_text_keep_the_order_they_were_produced_in() -> None:
    emitted: Emitted = []
    ctx = make_ctx(emitted)
    await ctx.think_stream("Let me ")
    await ctx.think_stream("think.")
    await ctx.say("The answer")
    await ctx.say(" is 42.")
    await ctx.think_stream("Double-check.")
    await ctx.think("checked")
    await ctx.say("Sure.")
    await ctx.aclose()
    assert emitted == [
        ("thinking_delta", {"message_id": "msg_run_1", "delta": "Let me think."}),
        ("text_delta", {"message_id": "msg_run_1", "delta": "The answer is 42."}),
        ("thinking_delta", {"message_id": "msg_run_1", "delta": "Double-check."}),
        ("agent_thinking", {"reasoning": "checked", "step": 1}),
        ("text_delta", {"message_id": "msg_run_1", "delta": "Sure."}),
    ]
    assert ctx.text == "The answer is 42.Sure."  # reasoning is not the answer


async def test_reasoning_is_coalesced_in_the_text_window() -> None:
    emitted: Emitted = []
    ctx = make_ctx(emitted, coalesce_ms=20)
    for piece in ("a", "b", "c"):
        await ctx.think_stream(piece)
    assert emitted == []
    await wait_until(lambda: bool(emitted), within=seconds(2.0), message="the window")
    assert emitted == [("thinking_delta", {"message_id": "msg_run_1", "delta": "abc"})]
    await ctx.think_stream("")  # nothing to send
    await ctx.aclose()
    assert len(emitted) == 1


async def test_usage_reports_add_up() -> None:
    ctx = make_ctx([])
    assert ctx.usage is msgspec.UNSET  # agent_completed then has no usage field
    ctx.report_usage(None)
    assert ctx.usage is None  # a model was called; its provider sent no usage
    ctx.report_usage({"prompt_tokens": 10, "completion_tokens": 2})
    ctx.report_usage(None)
    ctx.report_usage({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 7})
    assert ctx.usage == {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 19}
    with pytest.raises(ValueError, match="prompt_tokens"):
        ctx.report_usage({"prompt_tokens": -1, "completion_tokens": 0})
    payload = {"final_response": "x", "duration_ms": 1, "usage": ctx.usage}
    assert b'"usage":{"prompt_tokens":15' in encode_payload("agent_completed", payload)


async def test_a_model_tool_call_keeps_its_id_and_a_refused_one_is_reported() -> None:
    emitted: Emitted = []
    ctx = make_ctx(emitted)

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    assert await ctx.run_tool_call("call_model_1", add, {"a": 1, "b": 2}) == 3
    with pytest.raises(ToolError, match="not valid JSON"):
        await ctx.run_tool_call("call_model_2", add, {}, refused="not valid JSON")
    await ctx.aclose()
    assert [(t, d["tool_call_id"], d.get("status")) for t, d in emitted] == [
        ("tool_executing", "call_model_1", None),
        ("tool_completed", "call_model_1", "success"),
        ("tool_executing", "call_model_2", None),
        ("tool_completed", "call_model_2", "error"),
    ]
    assert emitted[3][1]["error"] == "not valid JSON"
