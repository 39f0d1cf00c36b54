"""Event bounds: ``max_event_bytes`` at emit, and a bound on every string of every payload.

An oversized event is refused at ``Bridge.emit`` with ``EventTooLarge``, so it
never reaches the log, and so never the viewers of the thread: before, one
such event closed every live viewer as a slow consumer (4008), on every
reconnect. Identifier-like payload strings are bounded by ``MAX_NAME_CHARS``;
free text only by the whole event's size (``agentcast.events`` docstring).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agentcast.agents import RunContext
from agentcast.bridge import Bridge
from agentcast.config import EngineSettings
from agentcast.errors import EventTooLarge, InvalidEvent
from agentcast.event_size import check_event_size, envelope_bytes
from agentcast.events import (
    MAX_NAME_CHARS,
    PAYLOAD_TYPES,
    EventType,
    encode_envelope,
    encode_payload,
)
from agentcast.log.memory import MemoryLog
from tests.gateway.ws_support import LiveServer, ServerFactory
from tests.gateway.wsutil import events_of, frames_until, is_terminal_of, recv, request, send
from tests.invariants import assert_contiguous, decode_all
from tests.utils import wait_until

LIMIT = 4096
SETTINGS = EngineSettings(log_backend="memory", health_interval_s=3600, max_event_bytes=LIMIT)
IDS: dict[str, Any] = {
    "thread_id": "th_bounds", "run_id": "run_1", "parent_run_id": None, "agent": "demo",
}  # fmt: skip


async def started_bridge() -> tuple[Bridge, MemoryLog]:
    log = MemoryLog()
    bridge = Bridge(log, SETTINGS)
    await bridge.ensure_integration()
    return bridge, log


def custom_of(chars: int) -> dict[str, Any]:
    return {"name": "blob", "value": "x" * chars}


EVENT_ID = "ev_" + "0" * 32
TS = 1764115200.125


def chars_for_exact_limit() -> int:
    """The value length whose envelope (seq at its widest) is exactly ``LIMIT`` bytes at ``TS``."""
    payload = encode_payload("custom", custom_of(0))
    size = envelope_bytes(payload, event_type="custom", event_id=EVENT_ID, ts=TS, **IDS)
    return LIMIT - size  # one byte per "x": the arithmetic is exact


def check(chars: int) -> None:
    payload = encode_payload("custom", custom_of(chars))
    check_event_size(payload, LIMIT, event_type="custom", event_id=EVENT_ID, ts=TS, **IDS)


# --- max_event_bytes at the bridge ----------------------------------------------------------


def test_the_bound_is_exact_on_the_envelope_as_stored_with_the_widest_seq() -> None:
    chars = chars_for_exact_limit()
    check(chars)
    with pytest.raises(EventTooLarge) as info:
        check(chars + 1)
    assert info.value.message == (
        f"the custom event is {LIMIT + 1} bytes encoded, over the limit of {LIMIT} bytes "
        "(setting max_event_bytes, AGENTCAST_MAX_EVENT_BYTES); nothing was appended"
    )
    assert isinstance(info.value, InvalidEvent)  # the documented code: invalid_message
    assert info.value.code == "invalid_message"
    # What the log stores (a real seq) is never more than what was measured.
    payload = encode_payload("custom", custom_of(chars))
    stored = encode_envelope(
        data=payload, event_type="custom", event_id=EVENT_ID, seq=1, ts=TS, **IDS
    )
    assert len(stored) == LIMIT - 18  # seq 1 is 18 digits narrower than 2**63 - 1
    # The fast path (no encoding) and the exact path agree on either side of it.
    for extra in (-2000, -1, 0):
        check(chars + extra)
    for extra in (1, 2000):
        with pytest.raises(EventTooLarge):
            check(chars + extra)


async def test_an_oversized_emit_is_refused_and_nothing_is_appended() -> None:
    bridge, log = await started_bridge()
    try:
        first = await bridge.emit(event_type="custom", data=custom_of(10), **IDS)
        # The emit's own ``ts`` and event id differ in width from TS and EVENT_ID by a
        # few bytes: 20 either side of the bound is on that side whatever they are.
        bound = chars_for_exact_limit()
        near = await bridge.emit(event_type="custom", data=custom_of(bound - 20), **IDS)
        assert len(near.raw) <= LIMIT
        with pytest.raises(EventTooLarge, match=r"the custom event is .* max_event_bytes"):
            await bridge.emit(event_type="custom", data=custom_of(bound + 20), **IDS)
        # Nothing of the refused event was appended; what was committed is intact,
        # and the next event takes the next seq (no hole).
        after = await bridge.emit(event_type="custom", data=custom_of(1), **IDS)
        stored = await log.read(IDS["thread_id"])
        assert [e.seq for e in stored] == [1, 2, 3]
        assert [e.event_id for e in stored] == [first.event_id, near.event_id, after.event_id]
        refused = bridge.metrics.registry.get_sample_value(
            "agentcast_events_refused_total", {"reason": "too_large"}
        )
        assert refused == 1
    finally:
        await bridge.close()


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("agent_started", {"message": "m" * LIMIT}),
        ("agent_thinking", {"reasoning": "r" * LIMIT}),
        ("text_delta", {"message_id": "msg_1", "delta": "d" * LIMIT}),
        ("progress", {"percentage": 5, "message": "p" * LIMIT}),
        ("agent_completed", {"final_response": "f" * LIMIT, "duration_ms": 1}),
        ("agent_error", {"error_type": "E", "message": "e" * LIMIT, "duration_ms": 1}),
        ("agent_cancelled", {"reason": "c" * LIMIT, "duration_ms": 1}),
        (
            "tool_completed",
            {"tool_call_id": "c", "tool_name": "t", "status": "error", "error": "e" * LIMIT,
             "duration_ms": 1},
        ),
        # Control characters cost 6 bytes each once JSON-encoded: measured encoded.
        ("agent_thinking", {"reasoning": "\x01" * (LIMIT // 6)}),
    ],
)  # fmt: skip
async def test_free_text_is_bounded_by_the_event_size(
    event_type: str, data: dict[str, Any]
) -> None:
    bridge, log = await started_bridge()
    try:
        with pytest.raises(EventTooLarge, match=f"the {event_type} event is"):
            await bridge.emit(event_type=event_type, data=data, **IDS)
        assert await log.read(IDS["thread_id"]) == []
    finally:
        await bridge.close()


# --- every string of every payload is bounded -----------------------------------------------

#: One valid payload per type: the base each over-long value is put into.
VALID: dict[EventType, dict[str, Any]] = {
    EventType.AGENT_STARTED: {"message": "hi"},
    EventType.AGENT_THINKING: {"reasoning": "r"},
    EventType.TOOL_EXECUTING: {"tool_call_id": "c1", "tool_name": "t", "parameters": {}},
    EventType.TOOL_COMPLETED: {
        "tool_call_id": "c1", "tool_name": "t", "status": "success", "duration_ms": 1,
    },
    EventType.TEXT_DELTA: {"message_id": "msg_1", "delta": "d"},
    EventType.THINKING_DELTA: {"message_id": "msg_1", "delta": "d"},
    EventType.PROGRESS: {"percentage": 1, "message": "m"},
    EventType.AGENT_COMPLETED: {"final_response": "f", "duration_ms": 1},
    EventType.AGENT_ERROR: {"error_type": "E", "message": "m", "duration_ms": 1},
    EventType.AGENT_CANCELLED: {"reason": "r", "duration_ms": 1},
    EventType.CUSTOM: {"name": "n", "value": 1},
}  # fmt: skip
#: The identifier-like fields, bounded by MAX_NAME_CHARS (docs/events.md).
NAME_FIELDS: dict[EventType, set[str]] = {
    EventType.TOOL_EXECUTING: {"tool_call_id", "tool_name"},
    EventType.TOOL_COMPLETED: {"tool_call_id", "tool_name"},
    EventType.TEXT_DELTA: {"message_id"},
    EventType.THINKING_DELTA: {"message_id"},
    EventType.AGENT_ERROR: {"error_type"},
    EventType.CUSTOM: {"name"},
}
#: The free-text fields, bounded by max_event_bytes only.
FREE_TEXT_FIELDS: dict[EventType, set[str]] = {
    EventType.AGENT_STARTED: {"message"},
    EventType.AGENT_THINKING: {"reasoning"},
    EventType.TOOL_COMPLETED: {"error"},
    EventType.TEXT_DELTA: {"delta"},
    EventType.THINKING_DELTA: {"delta"},
    EventType.PROGRESS: {"message"},
    EventType.AGENT_COMPLETED: {"final_response"},
    EventType.AGENT_ERROR: {"message"},
    EventType.AGENT_CANCELLED: {"reason"},
}
NAME_CASES = [(t, f) for t, fields in NAME_FIELDS.items() for f in sorted(fields)]


def string_fields(event_type: EventType) -> dict[str, int | None]:
    """Every ``str`` field of the payload (alone or optional) and its ``max_length``."""
    info = msgspec.inspect.type_info(PAYLOAD_TYPES[event_type])
    assert isinstance(info, msgspec.inspect.StructType)
    found: dict[str, int | None] = {}
    for field in info.fields:
        options = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else ()
        for t in (field.type, *options):
            if isinstance(t, msgspec.inspect.StrType):
                found[field.name] = t.max_length
    return found


def test_the_tables_cover_every_payload_and_every_string_field() -> None:
    assert set(VALID) == set(PAYLOAD_TYPES)
    for event_type in PAYLOAD_TYPES:
        encode_payload(event_type, VALID[event_type])  # each base is valid as it is
        fields = string_fields(event_type)
        names = NAME_FIELDS.get(event_type, set())
        free = FREE_TEXT_FIELDS.get(event_type, set())
        # ``status`` is a Literal: bounded by its values, not a string field here.
        assert set(fields) == names | free, event_type
        assert {f for f, bound in fields.items() if bound == MAX_NAME_CHARS} == names
        assert {f for f, bound in fields.items() if bound is None} == free


@pytest.mark.parametrize(
    ("event_type", "field"), NAME_CASES, ids=[f"{t}.{f}" for t, f in NAME_CASES]
)
def test_an_over_long_name_is_refused_naming_its_field(event_type: EventType, field: str) -> None:
    at_bound = {**VALID[event_type], field: "n" * MAX_NAME_CHARS}
    encode_payload(event_type, at_bound)
    over = {**VALID[event_type], field: "n" * (MAX_NAME_CHARS + 1)}
    with pytest.raises(InvalidEvent) as info:
        encode_payload(event_type, over)
    assert f"$.{field}" in info.value.message
    assert str(MAX_NAME_CHARS) in info.value.message
    empty = {**VALID[event_type], field: ""}
    with pytest.raises(InvalidEvent, match=rf"\$\.{field}"):
        encode_payload(event_type, empty)


async def test_an_over_long_name_is_refused_at_emit_and_nothing_is_appended() -> None:
    bridge, log = await started_bridge()
    try:
        with pytest.raises(InvalidEvent, match=r"\$\.tool_name"):
            await bridge.emit(
                event_type="tool_executing",
                data={"tool_call_id": "c", "tool_name": "t" * 257, "parameters": {}},
                **IDS,
            )
        assert await log.read(IDS["thread_id"]) == []
    finally:
        await bridge.close()


# --- an oversized event harms nobody: a live viewer, another user (over /v1/ws) --------------

BIG = 100_000  # characters: over the 64 KiB bound below


async def test_an_oversized_event_reaches_its_agent_only_and_viewers_stay_open(
    make_ws_server: ServerFactory,
) -> None:
    # The send budget equals the event bound: before the bound, one bigger event
    # closed every live viewer of the thread with 4008.
    server: LiveServer = await make_ws_server(
        ws_send_queue_bytes=64 * 1024, max_event_bytes=64 * 1024,
        engine_settings={"max_event_bytes": 64 * 1024},
    )  # fmt: skip
    refused: list[EventTooLarge] = []
    go = asyncio.Event()

    async def oversize(ctx: RunContext) -> str:
        await ctx.think("before")
        await go.wait()  # the viewer follows the thread by now
        if ctx.message == "raise":
            await ctx.think("r" * BIG)  # uncaught: the run ends agent_error
        try:
            await ctx.say("s" * BIG)
        except EventTooLarge as exc:
            refused.append(exc)
        try:
            await ctx.think("t" * BIG)
        except EventTooLarge as exc:
            refused.append(exc)
        await ctx.say("after")  # the context is not poisoned by the refused text
        await ctx.think("after")
        return "done"

    server.gateway.engine.registry.register(oversize, name="oversize")
    alice, viewer, bob = (
        await server.connect("alice"), await server.connect("alice"), await server.connect("bob")
    )  # fmt: skip
    caught = await request(alice, type="start_agent", agent="oversize", message="catch")
    thread = caught["thread_id"]
    await request(viewer, type="subscribe", thread_id=thread)
    seen = await frames_until(viewer, lambda f: f.get("type") == "agent_thinking")
    other = await request(bob, type="start_agent", agent="countdown", message="5 0")
    go.set()
    got, bobs = await asyncio.gather(
        frames_until(viewer, is_terminal_of(caught["run_id"])),
        frames_until(bob, is_terminal_of(other["run_id"])),
    )
    events = events_of(seen + got)
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "agent_started"), (2, "agent_thinking"), (3, "text_delta"), (4, "agent_thinking"),
        (5, "agent_completed"),
    ]  # fmt: skip
    assert (events[2]["data"]["delta"], events[3]["data"]["reasoning"]) == ("after", "after")
    assert events[4]["data"]["final_response"] == "done"
    assert [e.message.split(" event")[0] for e in refused] == [
        "the text_delta", "the agent_thinking",
    ]  # fmt: skip
    assert all("max_event_bytes" in e.message for e in refused)

    # Uncaught, the refusal ends its run agent_error like any agent exception.
    raised = await request(
        alice, type="start_agent", agent="oversize", message="raise", thread_id=thread
    )
    got = await frames_until(viewer, is_terminal_of(raised["run_id"]))
    events += events_of(got)
    assert [(e["seq"], e["type"]) for e in events[5:]] == [
        (6, "agent_started"), (7, "agent_thinking"), (8, "agent_error"),
    ]  # fmt: skip
    error = events[-1]["data"]
    assert error["error_type"] == "EventTooLarge"
    assert "max_event_bytes" in error["message"]

    # The viewer is still open (a ping is answered) and saw exactly what was committed.
    await send(viewer, type="ping", id="still-open")
    assert (await recv(viewer))["type"] == "pong"
    assert all(c.close_code is None for c in server.ws_connections())
    stored = decode_all(await server.gateway.engine.bridge.read(thread))
    assert_contiguous(stored)
    assert [(e.seq, e.type) for e in stored] == [(e["seq"], e["type"]) for e in events]

    # Bob's run, at the same time on his own thread, is whole.
    bob_events = events_of(bobs)
    assert [e["seq"] for e in bob_events] == list(range(1, len(bob_events) + 1))
    assert (bob_events[0]["type"], bob_events[-1]["type"]) == ("agent_started", "agent_completed")
    await wait_until(lambda: not server.gateway.engine.bridge.buffered, message="all appended")
