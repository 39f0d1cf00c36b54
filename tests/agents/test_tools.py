"""``@tool`` and the dispatcher: schemas, validation, redaction, and the event pair.

docs/architecture.md invariant 3: every ``tool_executing`` is followed by its
``tool_completed``, whatever happens to the call (success, error, timeout,
cancellation); invariant 6: tool timeouts and value sizes are bounded.
"""

from __future__ import annotations

import asyncio
import enum
import re
import threading
import time
from typing import Annotated, Any, Literal

import msgspec
import pytest

from agentcast.agents import (
    AgentRegistry,
    AgentSettings,
    ToolError,
    ToolSpec,
    ToolTimeout,
    tool,
)
from agentcast.errors import InvalidInput
from agentcast.events import REDACTED
from tests.utils import MS, wait_until

from .harness import Harness, assert_tools_paired


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@tool
def describe_me(
    query: str,
    limit: int = 10,
    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5,
    verbose: bool = False,
    tags: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    by: Literal["team", "model"] = "team",
    color: Color = Color.RED,
    anything=None,
) -> dict[str, Any]:
    """Search things by query.

    This second paragraph is not part of the description.

    Args:
        query: What to look for.
        limit: At most this many results,
            counted after filtering.
        ratio (float): A share between 0 and 1.
        verbose: Say more.
        tags: Only items with these tags.
        extra: Free-form options.
        by: How to group.
        color: Which color.
        anything: Not typed.

    Returns:
        Matches.
    """
    return {"query": query, "limit": limit}


def test_schema_derived_from_type_hints_and_docstring() -> None:
    assert describe_me.name == "describe_me"
    assert describe_me.description == "Search things by query."
    assert describe_me.is_async is False
    assert describe_me.timeout_s is None
    assert describe_me("q", limit=3) == {"query": "q", "limit": 3}  # still the function
    assert describe_me.parameters_schema == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "limit": {
                "type": "integer",
                "description": "At most this many results, counted after filtering.",
                "default": 10,
            },
            "ratio": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "A share between 0 and 1.",
                "default": 0.5,
            },
            "verbose": {"type": "boolean", "description": "Say more.", "default": False},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "Only items with these tags.",
                "default": None,
            },
            "extra": {
                "anyOf": [{"type": "object"}, {"type": "null"}],
                "description": "Free-form options.",
                "default": None,
            },
            "by": {"enum": ["model", "team"], "description": "How to group.", "default": "team"},
            "color": {
                "$ref": "#/$defs/Color",
                "description": "Which color.",
                "default": "red",
            },
            "anything": {"description": "Not typed.", "default": None},
        },
        "required": ["query"],
        "additionalProperties": False,
        "$defs": {"Color": {"title": "Color", "enum": ["blue", "red"]}},
    }


def test_decorator_with_arguments_and_async_function() -> None:
    @tool(name="fetch.page", description="Fetch one page.", timeout_s=2.5)
    async def fetch(url: str) -> str:
        """Ignored docstring."""
        return url.upper()

    assert isinstance(fetch, ToolSpec)
    assert (fetch.name, fetch.description, fetch.timeout_s, fetch.is_async) == (
        "fetch.page",
        "Fetch one page.",
        2.5,
        True,
    )
    assert fetch.parameters_schema["required"] == ["url"]
    assert fetch.describe() == {
        "name": "fetch.page",
        "description": "Fetch one page.",
        "parameters": fetch.parameters_schema,
    }
    assert asyncio.run(fetch("x")) == "X"  # still callable like the function


def test_tool_without_docstring_or_parameters() -> None:
    @tool
    def ping() -> str:
        return "pong"

    assert ping.description == ""
    assert ping.parameters_schema == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }


def test_signatures_that_cannot_be_described_are_refused() -> None:
    def star(*args: int) -> None: ...

    def kwargs(**kw: int) -> None: ...

    def positional(x: int, /) -> None: ...

    for fn in (star, kwargs, positional):
        with pytest.raises(TypeError, match="passable by keyword"):
            tool(fn)
    with pytest.raises(TypeError, match="JSON Schema"):
        tool(_takes_object)
    with pytest.raises(ValueError, match="invalid tool name"):
        tool(name="has space")(star)
    with pytest.raises(ValueError, match="timeout_s"):
        tool(timeout_s=0)(ping_fn)


def _takes_object(x: threading.Lock) -> None: ...


def ping_fn() -> None: ...


def test_validate_converts_and_keeps_defaults_out() -> None:
    assert describe_me.validate({"query": "q"}) == {"query": "q"}
    assert describe_me.validate({"query": "q", "color": "blue", "limit": 3}) == {
        "query": "q",
        "color": Color.BLUE,
        "limit": 3,
    }
    assert describe_me.validate({"query": "q", "ratio": 1}) == {"query": "q", "ratio": 1.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param({}, "Object missing required field `query`", id="missing"),
        pytest.param({"query": 1}, "Expected `str`, got `int` (argument `query`)", id="type"),
        pytest.param({"query": "q", "limit": True}, "got `bool` (argument `limit`)", id="bool"),
        pytest.param({"query": "q", "nope": 1}, "unknown field `nope`", id="unknown"),
        pytest.param({"query": "q", "ratio": 2}, "<= 1.0 (argument `ratio`)", id="bounds"),
        pytest.param({"query": "q", "by": "day"}, "Invalid enum value 'day'", id="literal"),
        pytest.param({"query": "q", "tags": ["a", 1]}, "(argument `tags[1]`)", id="nested"),
    ],
)
def test_validate_rejects_bad_arguments(args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        describe_me.validate(args)
    assert info.value.message.startswith("invalid arguments for tool 'describe_me': ")
    assert message in info.value.message


# --- the dispatcher, through RunContext.call_tool -----------------------------


def make(*tools: ToolSpec[..., Any], **settings: Any) -> tuple[Harness, AgentRegistry]:
    registry = AgentRegistry()
    for spec in tools:
        registry.add_tool(spec)
    harness = Harness(registry, AgentSettings(**settings))
    return harness, registry


@tool
def login(username: str, password: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log in (returns a token, which must not reach the client)."""
    return {"user": username, "access_token": "tok-123", "nested": [{"api_key": "k"}]}


async def test_success_pair_with_redacted_parameters_and_results() -> None:
    harness, _ = make(login)
    ctx = harness.context()
    result = await ctx.call_tool(
        "login",
        username="bob",
        password="hunter2",
        config={"api_key": "sk-1", "retries": 3, "items": [{"secret": "s", "ok": 1}]},
    )
    # The agent gets the real value; the event gets the redacted copy.
    assert result["access_token"] == "tok-123"
    executing, completed = harness.events
    assert executing.type == "tool_executing"
    assert executing.data["tool_name"] == "login"
    assert executing.data["tool_call_id"].startswith("call_")
    assert executing.data["parameters"] == {
        "username": "bob",
        "password": REDACTED,
        "config": {"api_key": REDACTED, "retries": 3, "items": [{"secret": REDACTED, "ok": 1}]},
    }
    assert completed.type == "tool_completed"
    assert completed.data["tool_call_id"] == executing.data["tool_call_id"]
    assert completed.data["status"] == "success"
    assert completed.data["results"] == {
        "user": "bob",
        "access_token": REDACTED,
        "nested": [{"api_key": REDACTED}],
    }
    assert "error" not in completed.data
    assert completed.data["duration_ms"] >= 0


async def test_spec_objects_are_called_without_registry() -> None:
    harness, _ = make()
    ctx = harness.context()
    assert await ctx.call_tool(describe_me, query="q") == {"query": "q", "limit": 10}
    assert harness.types() == ["tool_executing", "tool_completed"]


@tool
def big(size: int) -> str:
    """Return a long string."""
    return "x" * size


async def test_values_above_max_value_bytes_are_truncated() -> None:
    harness, _ = make(big, max_value_bytes=200)
    ctx = harness.context()
    assert len(await ctx.call_tool("big", size=1000)) == 1000
    assert len(await ctx.call_tool("big", size=10)) == 10
    first, second = harness.of_type("tool_completed")
    assert first.data["results"] == {
        "truncated": True,
        "original_bytes": 1002,  # the JSON string with its quotes
        "preview": '"' + "x" * 99,
    }
    assert second.data["results"] == "x" * 10
    # Parameters are bounded the same way.
    await ctx.call_tool(describe_me, query="q" * 500)
    params = harness.of_type("tool_executing")[-1].data["parameters"]
    assert params["truncated"] is True
    assert params["original_bytes"] == len('{"query":""}') + 500


@tool
def fails(path: str) -> None:
    """Raise with a path and a secret in the message."""
    raise ValueError(f"cannot open {path}: password=hunter2 rejected")


async def test_error_status_with_sanitised_message_and_tool_error() -> None:
    harness, _ = make(fails)
    ctx = harness.context()
    with pytest.raises(ToolError) as info:
        await ctx.call_tool("fails", path="/home/alice/app/settings.py")
    executing, completed = harness.events
    expected = "ValueError: cannot open <path>: password=[REDACTED] rejected"
    assert completed.data == {
        "tool_call_id": executing.data["tool_call_id"],
        "tool_name": "fails",
        "status": "error",
        "error": expected,
        "duration_ms": completed.data["duration_ms"],
    }
    error = info.value
    assert error.message == expected
    assert error.tool_name == "fails"
    assert error.tool_call_id == executing.data["tool_call_id"]
    assert isinstance(error.__cause__, ValueError)  # the agent can still inspect it


async def test_bad_arguments_end_the_call_with_error_without_running_it() -> None:
    ran = []

    @tool
    def count(n: int) -> int:
        ran.append(n)
        return n

    harness, _ = make(count)
    ctx = harness.context()
    with pytest.raises(ToolError, match="invalid arguments for tool 'count'"):
        await ctx.call_tool("count", n="three")
    assert ran == []
    executing, completed = harness.events
    assert executing.data["parameters"] == {"n": "three"}
    assert completed.data["status"] == "error"
    assert completed.data["error"] == (
        "invalid arguments for tool 'count': Expected `int`, got `str` (argument `n`)"
    )


async def test_unknown_tool_is_a_paired_error() -> None:
    harness, _ = make()
    ctx = harness.context()
    with pytest.raises(ToolError, match="unknown tool 'nope'"):
        await ctx.call_tool("nope", x=1)
    assert [(e.type, e.data.get("status")) for e in harness.events] == [
        ("tool_executing", None),
        ("tool_completed", "error"),
    ]


@tool(timeout_s=50 * MS)
async def slow(seconds: float) -> str:
    """Sleep."""
    await asyncio.sleep(seconds)
    return "done"


@tool(timeout_s=50 * MS)
def slow_sync(seconds: float) -> str:
    """Sleep in a thread."""
    time.sleep(seconds)
    return "done"


@pytest.mark.parametrize("spec", [slow, slow_sync], ids=["async", "sync"])
async def test_timeout_status_and_tool_timeout(spec: ToolSpec[..., Any]) -> None:
    harness, _ = make(spec)
    ctx = harness.context()
    started = time.perf_counter()
    with pytest.raises(ToolTimeout) as info:
        await ctx.call_tool(spec, seconds=200 * MS)
    assert time.perf_counter() - started < 150 * MS
    assert not isinstance(info.value, TimeoutError)  # not confused with a run timeout
    completed = harness.events[-1]
    assert completed.data["status"] == "timeout"
    assert completed.data["error"] == f"tool '{spec.name}' timed out after {50 * MS:g} s"
    assert 45 * MS * 1000 <= completed.data["duration_ms"] < 150 * MS * 1000
    assert_tools_paired(harness.events)


async def test_default_timeout_comes_from_settings() -> None:
    @tool
    async def nap() -> None:
        await asyncio.sleep(1)

    harness, _ = make(nap, tool_timeout_s=30 * MS)
    with pytest.raises(ToolTimeout, match=re.escape(f"after {30 * MS:g} s")):
        await harness.context().call_tool(nap)


async def test_a_tool_raising_timeout_error_itself_is_an_error() -> None:
    @tool
    async def upstream() -> None:
        raise TimeoutError("upstream did not answer")

    harness, _ = make(upstream)
    with pytest.raises(ToolError) as info:
        await harness.context().call_tool(upstream)
    assert not isinstance(info.value, ToolTimeout)
    assert harness.events[-1].data["status"] == "error"
    assert harness.events[-1].data["error"] == "TimeoutError: upstream did not answer"


@pytest.mark.parametrize("spec", [slow, slow_sync], ids=["async", "sync"])
async def test_cancelling_the_task_emits_cancelled_then_reraises(
    spec: ToolSpec[..., Any],
) -> None:
    harness, _ = make(spec)
    ctx = harness.context()
    task = asyncio.create_task(ctx.call_tool(spec, seconds=0.04))
    await wait_until(lambda: bool(harness.events), interval=1 * MS)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    executing, completed = harness.events
    assert executing.type == "tool_executing"
    assert completed.data["status"] == "cancelled"
    assert completed.data["error"] == "the tool call was cancelled"
    assert completed.data["tool_call_id"] == executing.data["tool_call_id"]


async def test_cancelled_emit_survives_a_second_cancel() -> None:
    harness, _ = make(slow)
    harness.emit_delay = 20 * MS  # the tool_completed emit takes a while
    ctx = harness.context()
    task = asyncio.create_task(ctx.call_tool(slow, seconds=1))
    await wait_until(lambda: bool(harness.events), interval=1 * MS)
    task.cancel()
    await asyncio.sleep(5 * MS)  # now inside the shielded emit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.data.get("status") for e in harness.events] == [None, "cancelled"]


async def test_sync_tools_run_in_a_worker_thread() -> None:
    @tool
    def where() -> int:
        return threading.get_ident()

    harness, _ = make(where)
    assert await harness.context().call_tool(where) != threading.get_ident()


async def test_per_run_concurrency_limit() -> None:
    running = 0
    peak = 0

    @tool
    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(10 * MS)
        running -= 1
        return i

    harness, _ = make(work, tool_concurrency=2)
    ctx = harness.context()
    results = await asyncio.gather(*(ctx.call_tool(work, i=i) for i in range(6)))
    assert results == list(range(6))
    assert peak == 2
    # On the wire too: never more than two calls open at once.
    open_calls = max_open = 0
    for event in harness.events:
        open_calls += {"tool_executing": 1, "tool_completed": -1}[event.type]
        max_open = max(max_open, open_calls)
    assert max_open == 2
    assert_tools_paired(harness.events)


async def test_concurrency_limit_is_per_run() -> None:
    running = 0
    peak = 0

    @tool
    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(10 * MS)
        running -= 1

    harness, _ = make(work, tool_concurrency=1)
    one, two = harness.context(), harness.context()
    # One slot per run: two runs make two calls at once, never more.
    await asyncio.gather(*(ctx.call_tool(work) for ctx in (one, two, one, two)))
    assert peak == 2


async def test_aclose_cancels_tool_calls_left_running() -> None:
    @tool
    async def boom() -> None:
        raise RuntimeError("boom")

    harness, _ = make(slow, boom)
    ctx = harness.context()
    with pytest.raises(ToolError):
        # gather does not cancel the sibling when boom fails: it keeps running.
        await asyncio.gather(ctx.call_tool(slow, seconds=0.04), ctx.call_tool(boom))
    await ctx.aclose()
    statuses = {e.data["tool_name"]: e.data["status"] for e in harness.of_type("tool_completed")}
    assert statuses == {"boom": "error", "slow": "cancelled"}
    assert_tools_paired(harness.events)
