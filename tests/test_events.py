"""The event contract (docs/architecture.md invariant 1): one envelope, validated on emit."""

from __future__ import annotations

import msgspec
import pytest

from agentcast.errors import InvalidEvent
from agentcast.events import (
    PAYLOAD_TYPES,
    REDACTED,
    EventType,
    bounded_json,
    decode_event,
    encode_envelope,
    encode_payload,
    is_secret_key,
    redact,
)

VALID = {
    "agent_started": {"message": "hi"},
    "agent_thinking": {"reasoning": "hmm", "step": 1, "progress": 0.5},
    "tool_executing": {"tool_call_id": "c1", "tool_name": "t", "parameters": {"a": 1}},
    "tool_completed": {
        "tool_call_id": "c1", "tool_name": "t", "status": "success", "results": [1],
        "duration_ms": 1.5,
    },
    "text_delta": {"message_id": "m", "delta": "abc"},
    "thinking_delta": {"message_id": "m", "delta": "hmm"},
    "progress": {"percentage": 50, "message": "half"},
    "agent_completed": {"status": "success", "final_response": "done", "duration_ms": 3.0},
    "agent_error": {"error_type": "ValueError", "message": "bad", "duration_ms": 1.0},
    "agent_cancelled": {"reason": "user", "duration_ms": 1.0},
    "custom": {"name": "x", "value": {"any": ["thing"]}},
}  # fmt: skip


def test_every_type_has_a_valid_example() -> None:
    assert set(VALID) == {t.value for t in EventType} == {t.value for t in PAYLOAD_TYPES}


@pytest.mark.parametrize(("event_type", "data"), sorted(VALID.items()))
def test_valid_payload_round_trips(event_type: str, data: dict[str, object]) -> None:
    raw = encode_payload(event_type, data)
    assert msgspec.json.decode(raw) == data


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("nope", {}),
        ("agent_started", {}),
        ("agent_started", {"message": 1}),
        ("agent_started", {"message": "x", "extra": 1}),
        ("agent_thinking", {"reasoning": "x", "progress": 1.5}),
        ("agent_thinking", {"reasoning": "x", "step": -1}),
        ("tool_executing", {"tool_call_id": "", "tool_name": "t", "parameters": {}}),
        ("tool_executing", {"tool_call_id": "c", "tool_name": "t", "parameters": [1]}),
        ("tool_completed", {"tool_call_id": "c", "tool_name": "t", "status": "error",
                            "duration_ms": 1}),
        ("tool_completed", {"tool_call_id": "c", "tool_name": "t", "status": "success",
                            "error": "x", "duration_ms": 1}),
        ("tool_completed", {"tool_call_id": "c", "tool_name": "t", "status": "weird",
                            "duration_ms": 1}),
        ("tool_completed", {"tool_call_id": "c", "tool_name": "t", "status": "success",
                            "duration_ms": -1}),
        ("progress", {"percentage": 101}),
        ("agent_completed", {"status": "failure", "final_response": "x", "duration_ms": 1}),
        ("custom", {"name": "x", "value": object()}),
        ("custom", {"name": "", "value": 1}),
    ],
)  # fmt: skip
def test_invalid_payload_is_rejected(event_type: str, data: dict[str, object]) -> None:
    with pytest.raises(InvalidEvent):
        encode_payload(event_type, data)


def test_envelope_has_exactly_the_contract_fields() -> None:
    raw = encode_envelope(
        event_type="agent_started", event_id="e1", thread_id="th", run_id="r", parent_run_id=None,
        seq=7, ts=1.5, agent="demo", data=encode_payload("agent_started", {"message": "m"}),
    )  # fmt: skip
    assert msgspec.json.decode(raw) == {
        "v": 1, "type": "agent_started", "event_id": "e1", "thread_id": "th", "run_id": "r",
        "parent_run_id": None, "seq": 7, "ts": 1.5, "agent": "demo", "data": {"message": "m"},
    }  # fmt: skip
    event = decode_event(raw)
    assert event.seq == 7
    assert event.payload().message == "m"


def test_unknown_envelope_field_is_rejected_by_the_strict_decoder() -> None:
    raw = (
        b'{"v":1,"type":"custom","event_id":"e","thread_id":"t","run_id":"r",'
        b'"parent_run_id":null,"seq":1,"ts":1.0,"agent":null,"data":{},"extra":1}'
    )
    with pytest.raises(msgspec.ValidationError):
        decode_event(raw)


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True), ("db_password", True), ("client_secret", True), ("token", True),
        ("access_token", True), ("api_key", True), ("apiKey", True), ("API-KEY", True),
        ("Authorization", True), ("credentials", True), ("privateKey", True),
        ("max_tokens", False), ("token_count", False), ("query", False), ("author", False),
    ],
)  # fmt: skip
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redact_is_recursive_and_does_not_mutate() -> None:
    params = {"q": "x", "auth": {"api_key": "sk-1", "user": "u"}, "items": [{"password": "p"}]}
    assert redact(params) == {
        "q": "x", "auth": {"api_key": REDACTED, "user": "u"}, "items": [{"password": REDACTED}],
    }  # fmt: skip
    assert params["auth"] == {"api_key": "sk-1", "user": "u"}


def test_bounded_json_passes_small_values_and_marks_large_ones() -> None:
    assert bytes(bounded_json({"a": 1}, 100)) == b'{"a":1}'
    big = {"blob": "x" * 5000}
    marker = msgspec.json.decode(bytes(bounded_json(big, 1000)))
    assert marker["truncated"] is True
    assert marker["original_bytes"] == len(msgspec.json.encode(big))
    assert len(marker["preview"]) <= 500
    with pytest.raises(InvalidEvent):
        bounded_json(object())
