"""WebSocket bounds: the send queue's one budget, subscriptions, connections, positions.

Each limit test shows the limit holding, the documented answer (code, close
code, ``limit`` name), another connection or user unaffected, and nothing
already committed lost (every event, in order, no gap, no duplicate).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from agentcast.gateway.outbox import Outbox
from agentcast.gateway.ws import WsConnection
from agentcast.log.base import StoredEvent
from tests.gateway.ws_support import LiveServer, ServerFactory, StalledClient
from tests.gateway.wsutil import events_of, frames_until, is_terminal_of, recv, request
from tests.utils import seconds, wait_until

BUDGET = 32 * 1024
INT64_MAX = 2**63 - 1


def seqs_of(frames: list[Any], thread_id: str) -> list[int]:
    """The seqs of ``thread_id``'s events among ``frames`` (batch frames flattened)."""
    flat: list[dict[str, Any]] = []
    for frame in frames:
        flat.extend(frame if isinstance(frame, list) else [frame])
    return [f["seq"] for f in events_of(flat) if f["thread_id"] == thread_id]


async def make_thread(server: LiveServer, user: str, agent: str, message: str) -> tuple[str, int]:
    """A thread of ``user`` with one finished run; its id and head."""
    runner = server.gateway.engine.runner
    ticket = await runner.start_run(user, agent, message)
    await runner.wait_idle()
    head = (await server.gateway.engine.bridge.info(ticket.thread_id)).last_seq
    return ticket.thread_id, head


def connection_of(server: LiveServer, user: str) -> list[WsConnection]:
    return [c for c in server.ws_connections() if c.user_id == user]


# --- 1. the send queue: one budget for control, live and catch-up -------------------------


async def test_catch_up_and_live_stay_within_the_send_queue_budget(
    make_ws_server: ServerFactory,
) -> None:
    server = await make_ws_server(
        ws_send_queue_bytes=BUDGET, max_event_bytes=8 * 1024, catchup_batch=256
    )
    history, history_head = await make_thread(server, "alice", "blob", "1500 1000")
    live_thread, live_head = await make_thread(server, "alice", "echo", "hi")
    viewer = await server.connect()  # another connection, following live_thread live
    reply = await request(viewer, type="subscribe", thread_id=live_thread, after_seq=live_head)
    assert reply["type"] == "subscribed"
    before = set(server.ws_connections())
    stalled = await StalledClient.connect(server)
    try:
        await wait_until(
            lambda: len(set(server.ws_connections()) - before) == 1,
            message="the stalled client's connection",
        )
        (stalled_conn,) = set(server.ws_connections()) - before
        # The socket stops accepting frames: without this gate, kernel and transport
        # buffers (megabytes on loopback) would absorb the whole history first.
        reading = asyncio.Event()
        real_send = stalled_conn.websocket.send

        async def gated_send(message: Any) -> None:
            await reading.wait()
            await real_send(message)

        stalled_conn.websocket.send = gated_send  # type: ignore[method-assign]
        await stalled.send(type="subscribe", thread_id=history, id="h")
        await stalled.send(type="subscribe", thread_id=live_thread, after_seq=live_head, id="l")
        await wait_until(
            lambda: len(stalled_conn._subs) == 2,
            message="the stalled client follows both threads",
        )
        await wait_until(
            lambda: stalled_conn._outbox.total_bytes >= BUDGET // 2,
            message="the stalled client's send queue filled with history",
        )
        # Live events while history holds the queue: paced, never a slow consumer.
        accepted = await request(
            viewer, type="start_agent", agent="blob", message="40 1000", thread_id=live_thread
        )
        live = await frames_until(viewer, is_terminal_of(accepted["run_id"]))
        live_seqs = seqs_of(live, live_thread)
        assert live_seqs == list(range(live_head + 1, live_seqs[-1] + 1))
        assert len(live_seqs) == 42  # agent_started, 40 blobs, agent_completed
        assert stalled_conn.close_code is None
        assert stalled_conn.queued_peak_bytes <= BUDGET
        # The stalled client reads again: everything, in order, each once.
        reading.set()
        frames: list[Any] = []

        def complete() -> bool:
            history_done = seqs_of(frames, history)[-1:] == [history_head]
            return history_done and seqs_of(frames, live_thread)[-1:] == live_seqs[-1:]

        async with asyncio.timeout(seconds(20)):
            while not complete():
                got, ended = await stalled.read_some()
                assert not ended, "the stalled client was closed"
                frames.extend(got)
        assert seqs_of(frames, history) == list(range(1, history_head + 1))
        assert seqs_of(frames, live_thread) == live_seqs
        assert stalled_conn.close_code is None
        assert stalled_conn.queued_peak_bytes <= BUDGET
        assert max(c.queued_peak_bytes for c in server.ws_connections()) <= BUDGET
    finally:
        stalled.close()


async def test_an_event_as_large_as_the_budget_still_goes_through(
    make_ws_server: ServerFactory,
) -> None:
    budget = 16 * 1024
    server = await make_ws_server(ws_send_queue_bytes=budget, max_event_bytes=budget)
    thread_id, head = await make_thread(server, "alice", "blob", "3 14000")
    ws = await server.connect()
    reply = await request(ws, type="subscribe", thread_id=thread_id, id="s")
    assert reply["recovered"] is True
    frames = await frames_until(ws, lambda f: f.get("seq") == head)
    assert seqs_of(frames, thread_id) == list(range(1, head + 1))
    assert all(len(json.dumps(f)) > budget - 4096 for f in events_of(frames)[1:4])
    assert (await request(ws, type="ping"))["type"] == "pong"


def stored(seq: int, size: int) -> StoredEvent:
    """A stored event whose envelope is ``size`` bytes (only ``raw`` and ``seq`` matter here)."""
    return StoredEvent(
        event_id=f"ev_{seq}",
        thread_id="th_x",
        run_id="run_x",
        parent_run_id=None,
        seq=seq,
        ts=0.0,
        type="custom",
        raw=b"x" * size,
    )


async def test_outbox_rules() -> None:
    """The budget's rules on their own: events keep the reserve, one event when empty."""
    outbox = Outbox(4096, batch=False)
    assert (outbox.reserve_bytes, outbox.event_room) == (1024, 3072)
    assert outbox.offer(None, [stored(1, 5000)], live=False) == 1  # alone: always goes
    assert outbox.offer(None, [stored(2, 10)], live=False) == 0  # nothing beside it
    frame = await outbox.next_frame()
    outbox.done(frame)
    assert outbox.empty
    assert outbox.peak_bytes == 5000
    events = [stored(seq, 1000) for seq in range(3, 8)]
    assert outbox.offer(None, events, live=False) == 3  # 3000 of the 3072 events may use
    assert outbox.put_control(b"p" * 1000)  # a reply finds room in the reserve
    assert outbox.total_bytes == 4000 <= outbox.limit_bytes
    assert outbox.offer(None, events[3:], live=True) == 0  # live: the caller decides
    assert not outbox.put_control(b"p" * 200)  # replies past the reserve and the budget
    assert outbox.total_bytes == 4000
    waiter = asyncio.ensure_future(outbox.wait_fits(1000))
    await asyncio.sleep(0)
    assert not waiter.done()
    outbox.done(await outbox.next_frame())
    await asyncio.sleep(0)
    assert not waiter.done()  # 3000 queued: 1000 more would eat into the reserve
    outbox.done(await outbox.next_frame())
    await asyncio.wait_for(waiter, seconds(1))


# --- 2. subscriptions per connection ---------------------------------------------------------


async def test_subscriptions_per_connection_are_bounded(make_ws_server: ServerFactory) -> None:
    server = await make_ws_server(max_subscriptions_per_connection=2)
    threads = [await make_thread(server, "alice", "echo", f"t{i}") for i in range(3)]
    (t1, h1), (t2, h2), (t3, h3) = threads
    ws = await server.connect()
    other = await server.connect()
    for thread_id, head in ((t1, h1), (t2, h2), (t2, h2)):  # the third replaces, not counts
        reply = await request(ws, type="subscribe", thread_id=thread_id, after_seq=head)
        assert reply["type"] == "subscribed", reply
    refused = await request(ws, type="subscribe", thread_id=t3, after_seq=h3, id="over")
    assert refused == {
        "type": "error",
        "code": "limit_exceeded",
        "message": refused["message"],
        "ref": "over",
        "limit": "max_subscriptions_per_connection",
    }
    threads_before = len(await server.gateway.engine.store.list_threads("alice", limit=100))
    started = await request(ws, type="start_agent", agent="echo", message="new", id="new")
    assert (started["type"], started["code"], started["limit"]) == (
        "error",
        "limit_exceeded",
        "max_subscriptions_per_connection",
    )
    assert len(await server.gateway.engine.store.list_threads("alice", limit=100)) == (
        threads_before
    )  # refused before any run started
    assert server.gateway.metrics.refusals("max_subscriptions_per_connection") == 2
    # The connection and its subscriptions go on: a run in t1 arrives whole, in order.
    accepted = await request(ws, type="start_agent", agent="echo", message="go", thread_id=t1)
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    assert seqs_of(frames, t1) == list(range(h1 + 1, seqs_of(frames, t1)[-1] + 1))
    assert seqs_of(frames, t1)[0] == h1 + 1
    assert not seqs_of(frames, t2)
    # Another connection of the same user has its own bound.
    reply = await request(other, type="subscribe", thread_id=t3, after_seq=h3)
    assert reply["type"] == "subscribed"
    # Room again after an unsubscribe.
    assert (await request(ws, type="unsubscribe", thread_id=t2))["type"] == "unsubscribed"
    reply = await request(ws, type="subscribe", thread_id=t3, after_seq=h3)
    assert reply["type"] == "subscribed"


# --- 3. connections per user -------------------------------------------------------------------


async def expect_close(server: LiveServer, user: str) -> websockets.ConnectionClosed:
    ws = await server.connect_raw(user)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws)
    return closed.value


async def test_connections_per_user_websocket_and_sse_together(
    make_ws_server: ServerFactory,
) -> None:
    server = await make_ws_server(max_connections_per_user=2)
    thread_id, head = await make_thread(server, "alice", "echo", "x")
    first = await server.connect()
    base = f"http://127.0.0.1:{server.port}"
    headers = {"authorization": f"Bearer {server.token('alice')}"}
    async with (
        httpx.AsyncClient(base_url=base, headers=headers) as http,
        http.stream("GET", f"/v1/threads/{thread_id}/stream?after_seq={head}") as sse,
    ):
        assert sse.status_code == 200
        assert server.gateway.user_connections.count("alice") == 2
        closed = await expect_close(server, "alice")
        assert closed.rcvd is not None
        assert closed.rcvd.code == 4029
        assert "max_connections_per_user" in closed.rcvd.reason
        over = await http.get(f"/v1/threads/{thread_id}/stream")
        assert over.status_code == 429
        assert over.json()["code"] == "limit_exceeded"
        assert over.json()["limit"] == "max_connections_per_user"
        assert server.gateway.metrics.refusals("max_connections_per_user") == 2
        # Another user is unaffected.
        bob = await server.connect("bob")
        assert (await request(bob, type="ping"))["type"] == "pong"
        # The open connections go on: a run arrives whole on the first.
        accepted = await request(
            first, type="start_agent", agent="echo", message="y", thread_id=thread_id
        )
        frames = await frames_until(first, is_terminal_of(accepted["run_id"]))
        got = seqs_of(frames, thread_id)
        assert got == list(range(head + 1, got[-1] + 1))
    # The SSE stream ended (client gone): its place is given back.
    await wait_until(
        lambda: server.gateway.user_connections.count("alice") == 1,
        message="the SSE stream's slot released",
    )
    second = await server.connect()
    assert (await request(second, type="ping"))["type"] == "pong"
    assert (await expect_close(server, "alice")).rcvd.code == 4029  # type: ignore[union-attr]
    # A closed WebSocket gives its place back too.
    await first.close()
    await wait_until(
        lambda: server.gateway.user_connections.count("alice") == 1,
        message="the closed WebSocket's slot released",
    )
    third = await server.connect()
    assert (await request(third, type="ping"))["type"] == "pong"


async def test_a_connection_closed_by_the_server_gives_its_place_back(
    make_ws_server: ServerFactory,
) -> None:
    server = await make_ws_server(max_connections_per_user=1, ws_max_frame_bytes=1024)
    ws = await server.connect()
    await ws.send(json.dumps({"type": "ping", "pad": "x" * 4096}))  # closed 1009
    with pytest.raises(websockets.ConnectionClosed):
        await recv(ws)
    await wait_until(
        lambda: server.gateway.user_connections.count("alice") == 0,
        message="the slot of a connection the server closed released",
    )
    again = await server.connect()
    assert (await request(again, type="ping"))["type"] == "pong"


# --- 4. positions beyond a 64-bit seq ----------------------------------------------------------


@pytest.mark.parametrize("log_backend", ["memory", "sqlite"])
async def test_subscribe_after_seq_beyond_int64_is_invalid_message(
    make_ws_server: ServerFactory, log_backend: str
) -> None:
    server = await make_ws_server(log_backend=log_backend)
    thread_id, head = await make_thread(server, "alice", "echo", "x")
    ws = await server.connect()
    for after_seq in (INT64_MAX + 1, 2**64, 10**30, -1):
        reply = await request(ws, type="subscribe", thread_id=thread_id, after_seq=after_seq)
        assert (reply["type"], reply["code"]) == ("error", "invalid_message"), reply
    # The largest seq is a position like any other: beyond the head, not an error.
    reply = await request(ws, type="subscribe", thread_id=thread_id, after_seq=INT64_MAX)
    assert (reply["type"], reply["recovered"], reply["after_seq"]) == ("subscribed", False, 0)
    frames = await frames_until(ws, lambda f: f.get("seq") == head)
    assert seqs_of(frames, thread_id) == list(range(1, head + 1))
    assert (await request(ws, type="ping"))["type"] == "pong"
