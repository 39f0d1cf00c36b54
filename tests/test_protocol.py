"""The sans-I/O protocol: dicts in, commands or error codes out; frames in, bytes out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from agentcast.errors import CLOSE_CODE_EXPLANATIONS as ERRORS_CLOSE_TABLE
from agentcast.events import Event
from agentcast.protocol import (
    CLIENT_FRAME_TYPES,
    CLOSE_CODE_EXPLANATIONS,
    SERVER_FRAME_TYPES,
    Cancel,
    CancelAccepted,
    CloseCode,
    Command,
    ConnectionEstablished,
    ErrorCode,
    ErrorFrame,
    Ping,
    Pong,
    ProtocolError,
    RunAccepted,
    StartAgent,
    Subscribe,
    Subscribed,
    TokenBucket,
    Unsubscribe,
    Unsubscribed,
    UserMessage,
    encode_command,
    encode_frame,
    frame_too_large,
    pack_events,
    parse_client_frame,
    parse_server_frame,
)


@dataclass(frozen=True)
class Case:
    """A client frame and what it must parse to: a command, or an error code and ref."""

    name: str
    frame: Any  # a dict/list/scalar (JSON-encoded) or a raw str
    command: Command | None = None
    code: ErrorCode | None = None
    ref: str | int | None = None


CASES = [
    # --- valid frames
    Case("start_minimal", {"type": "start_agent", "agent": "echo", "message": "hi"},
         StartAgent(agent="echo", message="hi")),
    Case("start_full", {"type": "start_agent", "id": 7, "agent": "demo", "message": "m",
                        "thread_id": "th_1", "on_active": "enqueue", "idempotency_key": "k"},
         StartAgent(id=7, agent="demo", message="m", thread_id="th_1", on_active="enqueue",
                    idempotency_key="k")),
    Case("user_message", {"type": "user_message", "id": "a", "message": "again"},
         UserMessage(id="a", message="again")),
    Case("user_message_interrupt", {"type": "user_message", "message": "x", "thread_id": "t",
                                    "on_active": "interrupt"},
         UserMessage(message="x", thread_id="t", on_active="interrupt")),
    Case("subscribe_default_seq", {"type": "subscribe", "thread_id": "t"},
         Subscribe(thread_id="t", after_seq=0)),
    Case("subscribe_position", {"type": "subscribe", "thread_id": "t", "after_seq": 12,
                                "epoch": "e1"},
         Subscribe(thread_id="t", after_seq=12, epoch="e1")),
    Case("unsubscribe", {"type": "unsubscribe", "thread_id": "t", "id": 0},
         Unsubscribe(id=0, thread_id="t")),
    Case("cancel_by_run", {"type": "cancel", "run_id": "r"}, Cancel(run_id="r")),
    Case("cancel_by_thread", {"type": "cancel", "thread_id": "t"}, Cancel(thread_id="t")),
    Case("stop_agent_alias", {"type": "stop_agent", "run_id": "r"}, Cancel(run_id="r")),
    Case("ping", {"type": "ping"}, Ping()),
    Case("ping_with_id", {"type": "ping", "id": "p1"}, Ping(id="p1")),
    Case("id_null", {"type": "ping", "id": None}, Ping()),
    # --- bad_json
    Case("not_json", "{nope", code=ErrorCode.BAD_JSON),
    Case("truncated", '{"type": "ping"', code=ErrorCode.BAD_JSON),
    Case("empty", "", code=ErrorCode.BAD_JSON),
    Case("trailing_garbage", '{"type":"ping"} x', code=ErrorCode.BAD_JSON),
    # --- invalid_message: not an object
    Case("array", [{"type": "ping"}], code=ErrorCode.INVALID_MESSAGE),
    Case("string", '"ping"', code=ErrorCode.INVALID_MESSAGE),
    Case("number", 3, code=ErrorCode.INVALID_MESSAGE),
    Case("null", None, code=ErrorCode.INVALID_MESSAGE),
    # --- invalid_message: type
    Case("missing_type", {"id": 1, "thread_id": "t"}, code=ErrorCode.INVALID_MESSAGE, ref=1),
    Case("type_not_string", {"type": 5, "id": "x"}, code=ErrorCode.INVALID_MESSAGE, ref="x"),
    # --- unknown_type
    Case("unknown_type", {"type": "launch_rockets", "id": 9}, code=ErrorCode.UNKNOWN_TYPE, ref=9),
    Case("event_type_from_client", {"type": "agent_started"}, code=ErrorCode.UNKNOWN_TYPE),
    Case("case_sensitive_type", {"type": "PING"}, code=ErrorCode.UNKNOWN_TYPE),
    # --- invalid_message: fields
    Case("start_missing_agent", {"type": "start_agent", "message": "m", "id": "s"},
         code=ErrorCode.INVALID_MESSAGE, ref="s"),
    Case("start_missing_message", {"type": "start_agent", "agent": "echo"},
         code=ErrorCode.INVALID_MESSAGE),
    Case("start_message_not_string", {"type": "start_agent", "agent": "echo", "message": 1},
         code=ErrorCode.INVALID_MESSAGE),
    Case("start_bad_on_active", {"type": "start_agent", "agent": "e", "message": "m",
                                 "on_active": "queue"}, code=ErrorCode.INVALID_MESSAGE),
    Case("start_empty_agent", {"type": "start_agent", "agent": "", "message": "m"},
         code=ErrorCode.INVALID_MESSAGE),
    Case("unknown_field", {"type": "ping", "id": 3, "extra": True},
         code=ErrorCode.INVALID_MESSAGE, ref=3),
    Case("subscribe_missing_thread", {"type": "subscribe"}, code=ErrorCode.INVALID_MESSAGE),
    Case("subscribe_negative_seq", {"type": "subscribe", "thread_id": "t", "after_seq": -1},
         code=ErrorCode.INVALID_MESSAGE),
    Case("subscribe_seq_as_string", {"type": "subscribe", "thread_id": "t", "after_seq": "3"},
         code=ErrorCode.INVALID_MESSAGE),
    Case("subscribe_seq_bool", {"type": "subscribe", "thread_id": "t", "after_seq": True},
         code=ErrorCode.INVALID_MESSAGE),
    Case("subscribe_seq_float", {"type": "subscribe", "thread_id": "t", "after_seq": 1.5},
         code=ErrorCode.INVALID_MESSAGE),
    Case("subscribe_seq_huge", {"type": "subscribe", "thread_id": "t", "after_seq": 2**64},
         code=ErrorCode.INVALID_MESSAGE),
    Case("thread_id_not_string", {"type": "unsubscribe", "thread_id": 5},
         code=ErrorCode.INVALID_MESSAGE),
    Case("cancel_neither", {"type": "cancel", "id": "c"}, code=ErrorCode.INVALID_MESSAGE, ref="c"),
    Case("cancel_both", {"type": "cancel", "run_id": "r", "thread_id": "t"},
         code=ErrorCode.INVALID_MESSAGE),
    Case("id_float", {"type": "ping", "id": 1.5}, code=ErrorCode.INVALID_MESSAGE),
    Case("id_bool_not_echoed", {"type": "ping", "id": True}, code=ErrorCode.INVALID_MESSAGE),
    Case("id_object", {"type": "ping", "id": {"a": 1}}, code=ErrorCode.INVALID_MESSAGE),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parse_client_frame(case: Case) -> None:
    text = case.frame if isinstance(case.frame, str) else json.dumps(case.frame)
    if case.command is not None:
        assert parse_client_frame(text) == case.command
        assert parse_client_frame(text.encode()) == case.command
        return
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    assert info.value.code == case.code
    assert info.value.ref == case.ref
    assert info.value.message
    assert "Traceback" not in info.value.message


def test_every_client_type_has_a_case() -> None:
    covered = {c.frame.get("type") for c in CASES if isinstance(c.frame, dict) and c.command}
    assert covered == set(CLIENT_FRAME_TYPES)


@pytest.mark.parametrize(
    "command",
    [c.command for c in CASES if c.command is not None],
    ids=[c.name for c in CASES if c.command is not None],
)
def test_encode_command_round_trips(command: Command) -> None:
    """The client's encoder and the server's parser agree (aliases parse to the canonical type)."""
    text = encode_command(command)
    assert json.loads(text)["type"] == command.TYPE
    assert parse_client_frame(text) == command


FRAMES = [
    (ConnectionEstablished(connection_id="ws_1", user_id="u", server_version="0.1.0"),
     {"type": "connection_established", "connection_id": "ws_1", "user_id": "u",
      "server_version": "0.1.0"}),
    (RunAccepted(run_id="r", thread_id="t", epoch="e", after_seq=0),
     {"type": "run_accepted", "run_id": "r", "thread_id": "t", "epoch": "e", "after_seq": 0}),
    (RunAccepted(run_id="r", thread_id="t", epoch="e", after_seq=4, ref="x"),
     {"type": "run_accepted", "run_id": "r", "thread_id": "t", "epoch": "e", "after_seq": 4,
      "ref": "x"}),
    (Subscribed(thread_id="t", epoch="e", after_seq=3, recovered=False, ref=1),
     {"type": "subscribed", "thread_id": "t", "epoch": "e", "after_seq": 3, "recovered": False,
      "ref": 1}),
    (Unsubscribed(thread_id="t"), {"type": "unsubscribed", "thread_id": "t"}),
    (CancelAccepted(run_id="r", status="running", ref=0),
     {"type": "cancel_accepted", "run_id": "r", "status": "running", "ref": 0}),
    (Pong(), {"type": "pong"}),
    (Pong(ref="p"), {"type": "pong", "ref": "p"}),
    (ErrorFrame(code="not_found", message="m"),
     {"type": "error", "code": "not_found", "message": "m", "ref": None}),
]  # fmt: skip


@pytest.mark.parametrize(("frame", "expected"), FRAMES, ids=[type(f).__name__ for f, _ in FRAMES])
def test_server_frames(frame: Any, expected: dict[str, Any]) -> None:
    data = encode_frame(frame)
    assert json.loads(data) == expected
    assert parse_server_frame(data) == frame
    assert expected["type"] in SERVER_FRAME_TYPES


EVENT = {
    "v": 1, "type": "agent_started", "event_id": "ev", "thread_id": "t", "run_id": "r",
    "parent_run_id": None, "seq": 1, "ts": 1.5, "agent": "echo", "data": {"message": "m"},
}  # fmt: skip


def test_parse_server_events_single_and_batch() -> None:
    raw = json.dumps(EVENT).encode()
    second = json.dumps({**EVENT, "seq": 2}).encode()
    single = parse_server_frame(raw)
    assert isinstance(single, Event)
    assert single.seq == 1
    batch = parse_server_frame(pack_events([raw, second]))
    assert isinstance(batch, list)
    assert [e.seq for e in batch] == [1, 2]


def test_server_frames_tolerate_new_fields_but_events_do_not() -> None:
    assert parse_server_frame(b'{"type":"pong","ref":1,"later":true}') == Pong(ref=1)
    with pytest.raises(msgspec.ValidationError):
        parse_server_frame(json.dumps({**EVENT, "later": 1}))


def test_close_codes_are_the_errors_table() -> None:
    assert CLOSE_CODE_EXPLANATIONS is ERRORS_CLOSE_TABLE
    assert {1009, 4401, 4008, 1001} <= {int(c) for c in CloseCode}
    assert all(CLOSE_CODE_EXPLANATIONS[c] for c in CloseCode)


@pytest.mark.parametrize(
    ("data", "limit", "too_large"),
    [
        ("a" * 10, 10, False),
        ("a" * 11, 10, True),
        ("é" * 5, 10, False),  # 10 bytes
        ("é" * 6, 10, True),  # 12 bytes though 6 characters
        ("€" * 4, 12, False),
        (b"x" * 11, 10, True),
        (b"", 0, False),
    ],
)
def test_frame_too_large(data: str | bytes, limit: int, too_large: bool) -> None:
    assert frame_too_large(data, limit) is too_large


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not bucket.take(99.0)  # a clock going back adds nothing
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1, now=0)
