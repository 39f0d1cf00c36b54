"""Generated frames against a live server: it never crashes, and every reply is a valid frame.

Hypothesis drives synchronous clients against a uvicorn server running in its
own thread (its own event loop), so each example is just "send frames, read
until a marker pong". At least 10,000 frames go over three connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from agentcast.errors import ErrorCode
from agentcast.events import Event
from agentcast.protocol import CLIENT_FRAME_TYPES, ErrorFrame, Pong, parse_server_frame
from tests.gateway.ws_support import LiveServer, start_server, stop_server
from tests.utils import seconds

EXAMPLES = 110
FRAMES_PER_EXAMPLE = 100
CONNECTIONS = 3
ERROR_CODES = {c.value for c in ErrorCode}


@dataclass
class ThreadedServer:
    live: LiveServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    clients: list[ClientConnection]


@pytest.fixture(scope="module")
def threaded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """A server in a background thread, with generous rate limits, and three clients."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    path: Path = tmp_path_factory.mktemp("fuzz")
    live = asyncio.run_coroutine_threadsafe(
        # No keepalive pings, on either end: a ping's payload comes from the
        # global ``random``, which Hypothesis reports as its own non-determinism
        # once a slow run outlasts the ping interval (20 s).
        # Hypothesis starts far more runs, each in a new thread, than one connection may follow.
        start_server(
            path,
            ws_rate_per_s=1e6,
            ws_rate_burst=1_000_000,
            ws_ping_interval_s=3600.0,
            max_subscriptions_per_connection=100_000,
        ),
        loop,
    ).result(seconds(30))
    headers = {"Authorization": f"Bearer {live.token()}"}
    try:
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(
                    connect(live.url, additional_headers=headers, ping_interval=None)
                )
                for _ in range(CONNECTIONS)
            ]
            for c in clients:
                assert json.loads(c.recv(seconds(5)))["type"] == "connection_established"
            yield ThreadedServer(live, loop, thread, clients)
    finally:
        asyncio.run_coroutine_threadsafe(stop_server(live), loop).result(seconds(30))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(seconds(10))
        loop.close()


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_field_names = st.sampled_from(
    ["id", "agent", "message", "thread_id", "after_seq", "epoch", "run_id", "on_active",
     "idempotency_key", "extra"]
)  # fmt: skip
_field_values = (
    _json_values
    | st.sampled_from(["echo", "countdown", "nope", "reject", "enqueue", "interrupt", "1 0"])
    | st.integers(min_value=0, max_value=10)
)
_types = st.sampled_from([*CLIENT_FRAME_TYPES, "nope", "", "PING"]) | _json_values
_objects = st.builds(
    lambda t, fields: {"type": t, **fields},
    _types,
    st.dictionaries(_field_names, _field_values, max_size=4),
)
_good = st.sampled_from(
    [
        {"type": "ping", "id": 1},
        {"type": "start_agent", "agent": "echo", "message": "hi", "id": "s"},
        {"type": "subscribe", "thread_id": "th_made_up", "after_seq": 2},
        {"type": "cancel", "thread_id": "th_made_up"},
        {"type": "unsubscribe", "thread_id": "th_made_up"},
    ]
)
_frames: st.SearchStrategy[str | bytes] = st.one_of(
    _objects.map(json.dumps),
    _good.map(json.dumps),
    _json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
)


def check_reply(frame: Any) -> bool:
    """Validate one server frame; return True when it is the end-of-example marker pong."""
    parsed = parse_server_frame(frame)
    if isinstance(parsed, Event | list):
        return False
    if isinstance(parsed, ErrorFrame):
        assert parsed.code in ERROR_CODES, parsed
        assert parsed.code != ErrorCode.INTERNAL, parsed  # a generated frame found a bug
        assert "Traceback" not in parsed.message, parsed
        assert 'File "' not in parsed.message, parsed
    return isinstance(parsed, Pong) and isinstance(parsed.ref, str) and parsed.ref.startswith("end")


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(_frames, min_size=FRAMES_PER_EXAMPLE, max_size=FRAMES_PER_EXAMPLE))
def test_generated_frames_never_break_the_server(
    threaded_server: ThreadedServer, frames: list[str | bytes]
) -> None:
    clients = threaded_server.clients
    for i, data in enumerate(frames):
        clients[i % len(clients)].send(data)
    for n, client in enumerate(clients):
        marker = f"end-{n}"
        client.send(json.dumps({"type": "ping", "id": marker}))
        while True:
            raw = client.recv(seconds(10))
            if check_reply(raw) and json.loads(raw)["ref"] == marker:
                break


def test_fuzzed_server_still_serves(threaded_server: ThreadedServer) -> None:
    """Runs after the fuzz test in this module: a normal run still completes end to end."""
    client = threaded_server.clients[0]
    client.send(json.dumps({"type": "start_agent", "agent": "echo", "message": "ok", "id": "fin"}))
    run_id = None
    while True:
        frame = json.loads(client.recv(seconds(10)))
        if isinstance(frame, dict) and frame.get("ref") == "fin":
            assert frame["type"] == "run_accepted", frame
            run_id = frame["run_id"]
        done = isinstance(frame, dict) and frame.get("type") == "agent_completed"
        if done and frame["run_id"] == run_id:
            return
