"""The Python client against a real server: exactly once across drops, restarts and resyncs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agentcast.client import AgentcastClient, ClientError, GenericEvent, Resync
from agentcast.events import Event
from tests.gateway.ws_support import (
    LiveServer,
    start_server,
    stop_server,
)
from tests.utils import seconds, wait_until


def client_for(server: LiveServer, user: str = "alice", **kwargs: object) -> AgentcastClient:
    kwargs.setdefault("backoff_base", 0.02)
    kwargs.setdefault("backoff_max", 0.2)
    kwargs.setdefault("request_timeout", seconds(5.0))
    return AgentcastClient(server.url, server.token(user), **kwargs)  # type: ignore[arg-type]


async def collect_run(
    client: AgentcastClient, run_id: str, timeout: float | None = None
) -> list[Event | Resync]:
    """Items from ``events()`` up to the run's terminal event."""
    items: list[Event | Resync] = []
    async with asyncio.timeout(seconds(10.0) if timeout is None else timeout):
        async for item in client.events():
            items.append(item)
            if isinstance(item, Event) and item.run_id == run_id and item.is_terminal:
                return items
    raise AssertionError("events() ended before the run did")


async def drain(client: AgentcastClient) -> list[Event | Resync]:
    return [item async for item in client.events()]


@pytest.mark.parametrize("batch", [True, False])
async def test_start_and_typed_events(ws_server: LiveServer, batch: bool) -> None:
    async with client_for(ws_server, batch=batch) as client:
        run = await client.start("echo", "hello")
        items = await collect_run(client, run.run_id)
        assert all(isinstance(i, Event) for i in items)
        assert [i.type for i in items if isinstance(i, Event)] == [
            "agent_started",
            "agent_thinking",
            "agent_completed",
        ]
        assert items[-1].payload().final_response == "hello"  # type: ignore[union-attr]
        assert client.position(run.thread_id) == (run.epoch, 3)


async def test_errors_raise_client_error_with_the_wire_code(ws_server: LiveServer) -> None:
    async with client_for(ws_server) as client:
        with pytest.raises(ClientError) as info:
            await client.start("no-such-agent", "x")
        assert info.value.code == "not_found"
        with pytest.raises(ClientError) as info:
            await client.subscribe("th_made_up")
        assert info.value.code == "not_found"
        await client.ping()  # still usable


async def test_cancel_and_unsubscribe(ws_server: LiveServer) -> None:
    async with client_for(ws_server) as client:
        run = await client.start("countdown", "1000 10")
        accepted = await client.cancel(thread_id=run.thread_id)
        assert (accepted.run_id, accepted.status) == (run.run_id, "running")
        items = await collect_run(client, run.run_id, timeout=seconds(2.0))
        assert isinstance(items[-1], Event)
        assert items[-1].type == "agent_cancelled"
        await client.unsubscribe(run.thread_id)
        assert client.position(run.thread_id) is None


async def test_reconnect_mid_run_delivers_every_event_once(ws_server: LiveServer) -> None:
    async with client_for(ws_server) as client:
        run = await client.start("countdown", "60 10")
        seen: list[int] = []
        drops = 0
        async with asyncio.timeout(seconds(15)):
            async for item in client.events():
                assert isinstance(item, Event), item
                seen.append(item.seq)
                if item.seq in (5, 20, 35) and drops < 3:
                    drops += 1
                    for conn in ws_server.ws_connections():
                        await conn.close(1011, "test: connection killed")
                if item.is_terminal and item.run_id == run.run_id:
                    break
        assert seen == list(range(1, 63))
        assert client.reconnects == 3


async def test_restart_on_same_port_and_data_dir_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data, log_backend="sqlite")
    port = server.port
    client = client_for(server)
    try:
        await client.connect()
        run = await client.start("countdown", "3 0")
        first = await collect_run(client, run.run_id)
        assert [i.seq for i in first if isinstance(i, Event)] == [1, 2, 3, 4, 5]
        await stop_server(server)
        server = await start_server(data, log_backend="sqlite", port=port)
        await wait_until(lambda: client.reconnects >= 1, message="the client reconnected")
        # Same data directory: same epoch, so nothing is replayed and nothing resyncs.
        second = await client.start("countdown", "2 0", thread_id=run.thread_id)
        assert (second.epoch, second.after_seq) == (run.epoch, 5)
        items = await collect_run(client, second.run_id)
        assert [i.seq for i in items if isinstance(i, Event)] == [6, 7, 8, 9]
    finally:
        await client.close()
        await stop_server(server)


async def test_recovered_false_is_surfaced_as_resync(ws_server: LiveServer) -> None:
    async with client_for(ws_server) as client:
        run = await client.start("countdown", "2 0")
        await collect_run(client, run.run_id)
        sub = await client.subscribe(run.thread_id, after_seq=3, epoch="an-old-epoch")
        assert (sub.recovered, sub.after_seq) == (False, 0)
        items: list[Event | Resync] = []
        async with asyncio.timeout(seconds(5)):
            async for item in client.events():
                items.append(item)
                if isinstance(item, Event) and item.is_terminal:
                    break
        assert items[0] == Resync(run.thread_id, run.epoch, 0)
        assert [i.seq for i in items[1:] if isinstance(i, Event)] == [1, 2, 3, 4]


async def test_unauthorized_close_stops_reconnecting(ws_server: LiveServer) -> None:
    client = AgentcastClient(ws_server.url, ws_server.token("alice", ttl_s=1), backoff_base=0.01)
    async with client:
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(drain(client), seconds(4))
        assert info.value.code == "unauthorized"
        assert client.reconnects == 0


async def test_refused_credentials_raise_on_connect(ws_server: LiveServer) -> None:
    client = AgentcastClient(ws_server.url, "not-a-token")
    with pytest.raises(ClientError) as info:
        await client.connect()
    assert info.value.code == "unauthorized"
    await client.close()


async def test_close_ends_events(ws_server: LiveServer) -> None:
    client = client_for(ws_server)
    await client.connect()

    async def consume() -> int:
        return len([item async for item in client.events()])

    task = asyncio.create_task(consume())
    await client.close()
    assert await asyncio.wait_for(task, seconds(2)) == 0
    with contextlib.suppress(ClientError):
        await client.close()  # idempotent


# --- tolerance of additions, and no silent skip --------------------------------------------


def envelope(seq: int, **fields: Any) -> dict[str, Any]:
    """An event envelope of thread ``t1``, run ``r1``."""
    event: dict[str, Any] = {
        "v": 1,
        "type": "agent_thinking",
        "event_id": f"e{seq}",
        "thread_id": "t1",
        "run_id": "r1",
        "parent_run_id": None,
        "seq": seq,
        "ts": 1764115200.0 + seq,
        "agent": "scripted",
        "data": {"reasoning": str(seq)},
    }
    event.update(fields)
    return event


@contextlib.asynccontextmanager
async def scripted_server(frames: list[str]) -> AsyncIterator[str]:
    """A server that answers the client's first ``subscribe`` of ``t1``, then sends ``frames``.

    It stands for a later (or broken) server: the frames are sent as given,
    whatever they hold.
    """

    async def handler(ws: ServerConnection) -> None:
        await ws.send(
            json.dumps(
                {
                    "type": "connection_established",
                    "connection_id": "ws_scripted",
                    "user_id": "alice",
                    "server_version": "9.9.9",
                }
            )
        )
        request = json.loads(await ws.recv())
        assert request["type"] == "subscribe"
        await ws.send(
            json.dumps(
                {
                    "type": "subscribed",
                    "thread_id": "t1",
                    "epoch": "ep",
                    "after_seq": 0,
                    "recovered": True,
                    "ref": request["id"],
                }
            )
        )
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/ws"


async def test_added_fields_and_unknown_types_are_delivered_in_order() -> None:
    unknown = envelope(3, type="agent_reflecting", data={"mood": "calm"}, novelty=1)
    frames = [
        json.dumps(envelope(1)),
        json.dumps(envelope(2, added_by_a_later_server={"x": 1})),
        json.dumps(unknown),
        # A batch: an envelope that misses fields, then a terminal event.
        json.dumps(
            [
                {"v": 1, "type": "agent_thinking", "thread_id": "t1", "seq": 4, "data": {}},
                envelope(5, type="agent_completed", data={"final_response": "ok"}),
            ]
        ),
    ]
    async with scripted_server(frames) as url:
        client = AgentcastClient(url, "token", batch=False, reconnect=False)
        async with client:
            await client.subscribe("t1")
            items: list[Event | Resync] = []
            async with asyncio.timeout(seconds(5)):
                async for item in client.events():
                    items.append(item)
                    if isinstance(item, Event) and item.is_terminal:
                        break
            assert client.position("t1") == ("ep", 5)
    assert [(type(i).__name__, getattr(i, "seq", None)) for i in items] == [
        ("Event", 1),
        ("Event", 2),
        ("GenericEvent", 3),
        ("GenericEvent", 4),
        ("Event", 5),
    ]
    assert items[1] == Event(**envelope(2))  # the added field is ignored, nothing else
    third = items[2]
    assert isinstance(third, GenericEvent)
    assert (third.type, third.thread_id, third.run_id, third.data) == (
        "agent_reflecting",
        "t1",
        "r1",
        {"mood": "calm"},
    )
    assert third.envelope == unknown
    assert third.payload() == {"mood": "calm"}
    fourth = items[3]
    assert isinstance(fourth, GenericEvent)
    assert (fourth.type, fourth.run_id, fourth.event_id) == ("agent_thinking", "", "")


BAD_FRAMES = [
    ("not_json", "{not json"),
    ("no_seq", json.dumps({"type": "agent_thinking", "thread_id": "t1", "v": 1})),
    ("no_thread_id", json.dumps({k: v for k, v in envelope(2).items() if k != "thread_id"})),
    ("unknown_control_frame", json.dumps({"type": "mystery"})),
    ("bad_control_frame", json.dumps({"type": "subscribed", "thread_id": "t1"})),
    ("bad_item_in_batch", json.dumps([envelope(2), {"v": 1, "type": "custom"}])),
]


@pytest.mark.parametrize("frame", [b[1] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES])
async def test_a_frame_that_cannot_be_read_ends_events_with_bad_frame(frame: str) -> None:
    # Event 3 after the bad frame must never be delivered as if nothing was missing.
    frames = [json.dumps(envelope(1)), frame, json.dumps(envelope(3))]
    async with scripted_server(frames) as url:
        client = AgentcastClient(url, "token", batch=False, backoff_base=0.01)
        async with client:
            await client.subscribe("t1")
            seen: list[Event | Resync] = []

            async def consume() -> None:
                async with asyncio.timeout(seconds(5)):
                    async for item in client.events():
                        seen.append(item)

            with pytest.raises(ClientError) as info:
                await consume()
            assert info.value.code == "bad_frame"
            assert [(type(i), getattr(i, "seq", None)) for i in seen] == [(Event, 1)]
            assert client.reconnects == 0
            with pytest.raises(ClientError) as after:  # the client stopped: nothing goes on
                async with asyncio.timeout(seconds(2)):  # at once, not a request timeout
                    await client.ping()
            assert after.value.code == "bad_frame"
