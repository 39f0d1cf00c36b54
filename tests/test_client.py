"""The Python client against a real server: exactly once across drops, restarts and resyncs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from agentcast.client import AgentcastClient, ClientError, Resync
from agentcast.events import Event
from tests.gateway.ws_support import (
    LiveServer,
    start_server,
    stop_server,
)
from tests.utils import wait_until


def client_for(server: LiveServer, user: str = "alice", **kwargs: object) -> AgentcastClient:
    kwargs.setdefault("backoff_base", 0.02)
    kwargs.setdefault("backoff_max", 0.2)
    kwargs.setdefault("request_timeout", 5.0)
    return AgentcastClient(server.url, server.token(user), **kwargs)  # type: ignore[arg-type]


async def collect_run(
    client: AgentcastClient, run_id: str, timeout: float = 10.0
) -> list[Event | Resync]:
    """Items from ``events()`` up to the run's terminal event."""
    items: list[Event | Resync] = []
    async with asyncio.timeout(timeout):
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
        items = await collect_run(client, run.run_id, timeout=2.0)
        assert isinstance(items[-1], Event)
        assert items[-1].type == "agent_cancelled"
        await client.unsubscribe(run.thread_id)
        assert client.position(run.thread_id) is None


async def test_reconnect_mid_run_delivers_every_event_once(ws_server: LiveServer) -> None:
    async with client_for(ws_server) as client:
        run = await client.start("countdown", "60 10")
        seen: list[int] = []
        drops = 0
        async with asyncio.timeout(15):
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
        async with asyncio.timeout(5):
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
            await asyncio.wait_for(drain(client), 4)
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
    await asyncio.sleep(0.05)
    await client.close()
    assert await asyncio.wait_for(task, 2) == 0
    with contextlib.suppress(ClientError):
        await client.close()  # idempotent
