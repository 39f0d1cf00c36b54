"""``/v1/ws`` over a real uvicorn server and raw ``websockets`` clients (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agentcast.lifecycle import BridgeState
from agentcast.store.base import RunStatus
from tests.gateway.conftest import BOTH_LOGS
from tests.gateway.ws_support import AppendGate, LiveServer, ServerFactory, StalledClient
from tests.gateway.wsutil import (
    events_of,
    frames_until,
    is_terminal_of,
    recv,
    recv_control,
    request,
    send,
)
from tests.utils import seconds, wait_until


async def run_to_end(ws: ClientConnection, **start: Any) -> tuple[dict[str, Any], list[Any]]:
    """Start a run; return ``run_accepted`` and every frame after it up to its terminal event."""
    accepted = await request(ws, type="start_agent", **start)
    assert accepted["type"] == "run_accepted", accepted
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    return accepted, frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in events_of(frames)]


async def drain_until_closed(ws: ClientConnection) -> list[Any]:
    """Read until the server closes the connection; return what came before."""
    frames = []
    async with asyncio.timeout(seconds(5)):
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            return frames


def following_live(server: LiveServer, thread_id: str) -> int:
    """How many connections follow ``thread_id`` live (caught up with the log)."""
    return sum(
        1
        for c in server.ws_connections()
        if (sub := c._subs.get(thread_id)) is not None
        and sub.task is not None
        and not sub.catching_up
    )


async def quiet(ws: ClientConnection) -> list[Any]:
    """Frames that arrive before a ping's pong: proves nothing else was pending."""
    await send(ws, type="ping", id="quiet")
    frames = []
    while True:
        frame = await recv(ws)
        if isinstance(frame, dict) and frame.get("type") == "pong" and frame["ref"] == "quiet":
            return frames
        frames.append(frame)


# --- connecting ----------------------------------------------------------------------------


async def test_connection_established_first_and_subprotocol(ws_server: LiveServer) -> None:
    ws = await ws_server.connect_raw(subprotocols=["agentcast.v1"])  # type: ignore[list-item]
    assert ws.subprotocol == "agentcast.v1"
    first = json.loads(await ws.recv())
    assert first["type"] == "connection_established"
    assert first["user_id"] == "alice"
    assert first["connection_id"].startswith("ws_")
    assert first["server_version"]


async def test_bearer_subprotocol_authenticates(ws_server: LiveServer) -> None:
    token = ws_server.token("carol")
    ws = await websockets.connect(
        ws_server.url,
        subprotocols=["agentcast.v1", f"bearer.{token}"],  # type: ignore[list-item]
    )
    ws_server.clients.append(ws)
    assert ws.subprotocol == "agentcast.v1"
    assert (await recv(ws))["user_id"] == "carol"


@pytest.mark.parametrize("token", [None, "not-a-jwt"], ids=["missing", "invalid"])
async def test_handshake_refused_without_valid_credentials(
    ws_server: LiveServer, token: str | None
) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_server.url, additional_headers=headers)
    assert info.value.response.status_code in (401, 403)


async def test_expired_token_closes_4401(ws_server: LiveServer) -> None:
    ws = await ws_server.connect_raw(token=ws_server.token("alice", ttl_s=1))
    await recv(ws)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), seconds(3))
    assert ws.close_code == 4401


# --- runs and delivery ---------------------------------------------------------------------


@BOTH_LOGS
async def test_echo_run_accepted_before_every_event(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    await send(ws, type="start_agent", id=1, agent="echo", message="hello")
    accepted = await recv(ws)
    assert accepted == {
        "type": "run_accepted",
        "run_id": accepted["run_id"],
        "thread_id": accepted["thread_id"],
        "epoch": accepted["epoch"],
        "after_seq": 0,
        "ref": 1,
    }
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    assert [f["type"] for f in frames] == ["agent_started", "agent_thinking", "agent_completed"]
    assert seqs(frames) == [1, 2, 3]
    assert frames[-1]["data"]["final_response"] == "hello"
    assert await quiet(ws) == []


@BOTH_LOGS
async def test_second_run_in_thread_keeps_one_subscription(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    first, _ = await run_to_end(ws, agent="echo", message="a")
    second, frames = await run_to_end(ws, agent="echo", message="b", thread_id=first["thread_id"])
    assert second["after_seq"] == 3
    assert seqs(frames) == [4, 5, 6]  # no duplicates of 1..3, none of 4..6 twice
    assert await quiet(ws) == []


async def test_user_message_uses_last_agent_else_default(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    first, _ = await run_to_end(ws, agent="countdown", message="1 0")
    accepted = await request(ws, type="user_message", message="2 0", thread_id=first["thread_id"])
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    assert {f["agent"] for f in frames} == {"countdown"}
    assert len(frames) == 4
    fresh = await request(ws, type="user_message", message="hi")
    frames = await frames_until(ws, is_terminal_of(fresh["run_id"]))
    assert {f["agent"] for f in frames} == {"echo"}  # the default agent of these tests


@BOTH_LOGS
async def test_two_connections_of_one_user_both_get_every_event(ws_server: LiveServer) -> None:
    a = await ws_server.connect()
    b = await ws_server.connect()
    accepted = await request(a, type="start_agent", agent="countdown", message="20 5")
    sub = await request(b, type="subscribe", thread_id=accepted["thread_id"])
    assert sub["recovered"] is True
    got_a, got_b = await asyncio.gather(
        frames_until(a, is_terminal_of(accepted["run_id"])),
        frames_until(b, is_terminal_of(accepted["run_id"])),
    )
    assert seqs(got_a) == list(range(1, 23))
    assert seqs(got_b) == list(range(1, 23))


async def test_batch_frames_are_arrays_of_events(ws_server: LiveServer) -> None:
    ws = await ws_server.connect(batch=True)
    accepted = await request(ws, type="start_agent", agent="countdown", message="300 0")
    raw_frames = []
    flat: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds(10)):
        while not flat or flat[-1]["type"] != "agent_completed":
            frame = await recv(ws)
            raw_frames.append(frame)
            if isinstance(frame, list):
                assert frame, "an empty batch frame"
                flat.extend(frame)
            else:
                assert "seq" not in frame, "events travel in arrays with ?batch=1"
    assert [e["seq"] for e in flat] == list(range(1, 303))
    assert {e["run_id"] for e in flat} == {accepted["run_id"]}
    assert any(isinstance(f, list) for f in raw_frames)
    pong = await request(ws, type="ping")
    assert pong == {"type": "pong", "ref": pong["ref"]}  # control frames stay objects


@BOTH_LOGS
async def test_closing_the_socket_does_not_stop_the_run(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    accepted = await request(ws, type="start_agent", agent="countdown", message="5 20")
    await ws.close()
    store = ws_server.gateway.engine.store

    async def completed() -> bool:
        run = await store.get_run("alice", accepted["run_id"])
        return run.status is RunStatus.COMPLETED

    await wait_until(completed, message="the run completed without its socket")
    again = await ws_server.connect()
    await request(again, type="subscribe", thread_id=accepted["thread_id"])
    frames = await frames_until(again, is_terminal_of(accepted["run_id"]))
    assert seqs(frames) == list(range(1, 8))
    assert frames[-1]["type"] == "agent_completed"


@BOTH_LOGS
@pytest.mark.parametrize("by", ["run_id", "thread_id"])
@pytest.mark.parametrize("frame_type", ["cancel", "stop_agent"])
async def test_cancel_stops_countdown_within_a_second(
    ws_server: LiveServer, by: str, frame_type: str
) -> None:
    ws = await ws_server.connect()
    accepted = await request(ws, type="start_agent", agent="countdown", message="1000 10")
    await frames_until(ws, lambda f: f.get("type") == "agent_thinking")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reply = await request(ws, type=frame_type, **{by: accepted[by]})
    assert reply["type"] == "cancel_accepted"
    assert reply["run_id"] == accepted["run_id"]
    assert reply["status"] == "running"
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]), timeout=seconds(1))
    assert loop.time() - t0 < seconds(1)
    assert frames[-1]["type"] == "agent_cancelled"
    again = await request(ws, type="cancel", run_id=accepted["run_id"])
    assert again["status"] == "cancelled"  # already ended: no second terminal event
    assert events_of(await quiet(ws)) == []


async def queued_or_running(
    server: LiveServer, owner: ClientConnection, state: str
) -> dict[str, Any]:
    """A countdown run of alice in its own thread, ``running`` or ``queued``.

    The server allows alice one running run (``max_runs_per_user=1``): a
    second run queues behind the first.
    """
    first = await request(owner, type="start_agent", agent="countdown", message="1000 10")
    await frames_until(owner, lambda f: f.get("type") == "agent_thinking")
    if state == "running":
        return first
    queued = await request(owner, type="start_agent", agent="countdown", message="1000 10")
    run = await server.gateway.engine.store.get_run("alice", queued["run_id"])
    assert run.status is RunStatus.QUEUED
    return queued


@BOTH_LOGS
@pytest.mark.parametrize("state", ["running", "queued"])
@pytest.mark.parametrize("subscribed", [False, True], ids=["unsubscribed", "subscribed"])
async def test_cancel_accepted_then_the_terminal_event(
    make_ws_server: ServerFactory, log_backend: str, state: str, subscribed: bool
) -> None:
    """The canceller gets ``cancel_accepted`` and then the run's terminal event, once."""
    server = await make_ws_server(log_backend=log_backend, engine_settings={"max_runs_per_user": 1})
    owner = await server.connect()
    target = await queued_or_running(server, owner, state)
    canceller = await server.connect()
    if subscribed:
        sub = await request(canceller, type="subscribe", thread_id=target["thread_id"])
        assert (sub["after_seq"], sub["recovered"]) == (0, True)
    await send(canceller, type="cancel", run_id=target["run_id"], id="c")
    frames = await frames_until(canceller, is_terminal_of(target["run_id"]))
    replies = [f for f in frames if "seq" not in f]
    assert replies == [
        {"type": "cancel_accepted", "run_id": target["run_id"], "status": state, "ref": "c"}
    ]
    events = events_of(frames)
    assert events[-1]["type"] == "agent_cancelled"
    assert events[-1]["data"]["reason"] == "cancelled by user"
    if not subscribed:
        # Only the run's terminal event: nothing else of a thread it does not follow.
        assert frames == [replies[0], events[-1]]
    else:
        # Every event of the thread once, in order; the reply before the terminal event.
        assert frames.index(replies[0]) < len(frames) - 1
        assert seqs(events) == list(range(1, events[-1]["seq"] + 1))
        if state == "queued":
            assert [e["type"] for e in events] == ["agent_started", "agent_cancelled"]
    assert await quiet(canceller) == []  # no second terminal event, no stray frame


@BOTH_LOGS
async def test_cancel_forward_hands_over_to_a_later_subscription(
    make_ws_server: ServerFactory, log_backend: str
) -> None:
    """Subscribing before the cancelled run's terminal event is committed: it arrives once."""
    server = await make_ws_server(log_backend=log_backend)
    owner = await server.connect()
    accepted = await request(owner, type="start_agent", agent="countdown", message="1000 10")
    await frames_until(owner, lambda f: f.get("type") == "agent_thinking")
    gate = AppendGate(server.gateway.engine.log, frozenset({"agent_cancelled"}))
    canceller = await server.connect()
    reply = await request(canceller, type="cancel", run_id=accepted["run_id"])
    assert (reply["type"], reply["status"]) == ("cancel_accepted", "running")
    await asyncio.wait_for(gate.held.wait(), seconds(5))
    # The terminal event is held back: subscribe from the start meanwhile.
    await send(canceller, type="subscribe", thread_id=accepted["thread_id"], id="s")
    assert await recv(canceller) == {
        "type": "subscribed",
        "thread_id": accepted["thread_id"],
        "epoch": accepted["epoch"],
        "after_seq": 0,
        "recovered": True,
        "ref": "s",
    }
    gate.release()
    frames = await frames_until(canceller, is_terminal_of(accepted["run_id"]))
    events = events_of(frames)
    assert events == frames
    assert seqs(events) == list(range(1, events[-1]["seq"] + 1))
    assert events[-1]["type"] == "agent_cancelled"
    assert await quiet(canceller) == []  # the forward did not send it a second time


async def test_cancel_forward_ends_with_its_connection(ws_server: LiveServer) -> None:
    """A forward still waiting for its terminal event stops when its connection closes."""
    owner = await ws_server.connect()
    accepted = await request(owner, type="start_agent", agent="countdown", message="1000 10")
    await frames_until(owner, lambda f: f.get("type") == "agent_thinking")
    gate = AppendGate(ws_server.gateway.engine.log, frozenset({"agent_cancelled"}))
    canceller = await ws_server.connect_raw()
    connection_id = (await recv(canceller))["connection_id"]
    await request(canceller, type="cancel", run_id=accepted["run_id"])
    await asyncio.wait_for(gate.held.wait(), seconds(5))
    (conn,) = [c for c in ws_server.ws_connections() if c.connection_id == connection_id]
    (forward,) = conn._forwards.values()
    task = forward.task
    assert task is not None
    assert not task.done()
    await canceller.close()
    await wait_until(task.done, message="the forward stopped with its connection")
    assert not conn._forwards
    gate.release()
    frames = await frames_until(owner, is_terminal_of(accepted["run_id"]))
    assert frames[-1]["type"] == "agent_cancelled"


# --- isolation (invariant 4) ---------------------------------------------------------------


async def test_other_users_resources_answer_like_made_up_ids(ws_server: LiveServer) -> None:
    alice = await ws_server.connect("alice")
    accepted = await request(alice, type="start_agent", agent="countdown", message="50 20")
    bob = await ws_server.connect("bob")
    made_up = {"thread_id": "th_000000000000deadbeefdeadbeef", "run_id": "run_0000deadbeef"}
    probes = [
        {"type": "subscribe", "thread_id": "{thread_id}"},
        {"type": "cancel", "run_id": "{run_id}"},
        {"type": "cancel", "thread_id": "{thread_id}"},
        {"type": "start_agent", "agent": "echo", "message": "x", "thread_id": "{thread_id}"},
        {"type": "user_message", "message": "x", "thread_id": "{thread_id}"},
    ]
    for probe in probes:
        answers = []
        for ids in (accepted, made_up):
            frame = {k: (ids[v[1:-1]] if str(v).startswith("{") else v) for k, v in probe.items()}
            answers.append(await request(bob, id="same", **frame))
        assert answers[0] == answers[1], probe
        assert answers[0]["type"] == "error"
        assert answers[0]["code"] == "not_found"
    assert events_of(await quiet(bob)) == []
    frames = await frames_until(alice, is_terminal_of(accepted["run_id"]))
    assert frames[-1]["type"] == "agent_completed"  # bob's cancels did nothing


async def test_unknown_agent_is_not_found(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    reply = await request(ws, type="start_agent", agent="nope", message="x")
    assert (reply["type"], reply["code"]) == ("error", "not_found")


# --- subscriptions and resume --------------------------------------------------------------


@BOTH_LOGS
async def test_subscribe_twice_replaces_without_duplicates(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    accepted = await request(ws, type="start_agent", agent="countdown", message="40 5")
    await frames_until(ws, lambda f: f.get("seq") == 8)
    again = await request(ws, type="subscribe", thread_id=accepted["thread_id"], after_seq=3)
    assert (again["after_seq"], again["recovered"]) == (3, True)
    # After the reply: exactly the new subscription's stream, once (the old one is gone).
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    assert seqs(frames) == list(range(4, 43))


async def test_unsubscribe_stops_delivery(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    accepted = await request(ws, type="start_agent", agent="countdown", message="30 10")
    await frames_until(ws, lambda f: f.get("seq") == 2)
    reply = await request(ws, type="unsubscribe", thread_id=accepted["thread_id"])
    assert reply["type"] == "unsubscribed"
    await asyncio.sleep(seconds(0.1))  # room for a stray event: none may come
    assert events_of(await quiet(ws)) == []
    # Unsubscribing from anything (even a made-up thread) answers the same.
    assert (await request(ws, type="unsubscribe", thread_id="th_x"))["type"] == "unsubscribed"


@dataclass(frozen=True)
class Resume:
    """A reconnect: what the client asks for, and what the server must answer."""

    name: str
    after_seq: int | str  # an int, or "head" / "accepted" (the run_accepted position)
    epoch: str | None  # "same", None, or a literal other epoch
    recovered: bool
    expect_after: int | str  # where delivery restarts


HEAD = 7  # countdown "5": started, 5 thinking, completed

RESUME_CASES = [
    Resume("reconnect_before_first_event", "accepted", "same", True, 0),
    Resume("duplicate_last_event", "head", "same", True, HEAD),
    Resume("epoch_changed", 4, "another-epoch", False, 0),
    Resume("from_middle", 3, "same", True, 3),
    Resume("beyond_head", 99, "same", False, 0),
    Resume("no_epoch_first_subscribe", 0, None, True, 0),
]


@BOTH_LOGS
@pytest.mark.parametrize("case", RESUME_CASES, ids=[c.name for c in RESUME_CASES])
async def test_resume(ws_server: LiveServer, case: Resume) -> None:
    first = await ws_server.connect()
    accepted = await request(first, type="start_agent", agent="countdown", message="5 5")
    if case.name == "reconnect_before_first_event":
        await first.close()  # right after run_accepted, before any event was read
    else:
        await frames_until(first, is_terminal_of(accepted["run_id"]))
        await first.close()
    after_seq = {"accepted": accepted["after_seq"], "head": HEAD}.get(
        str(case.after_seq), case.after_seq
    )
    epoch = accepted["epoch"] if case.epoch == "same" else case.epoch
    seen_before = set(range(1, int(after_seq) + 1)) if case.recovered else set()

    second = await ws_server.connect()
    frame: dict[str, Any] = {"thread_id": accepted["thread_id"], "after_seq": after_seq}
    if epoch is not None:
        frame["epoch"] = epoch
    sub = await request(second, type="subscribe", **frame)
    assert sub["recovered"] is case.recovered
    assert sub["after_seq"] == case.expect_after
    assert sub["epoch"] == accepted["epoch"]
    if case.expect_after < HEAD:
        got = seqs(await frames_until(second, is_terminal_of(accepted["run_id"])))
    else:
        got = []
    got += seqs(events_of(await quiet(second)))
    assert len(got) == len(set(got)), "an event delivered twice"
    assert sorted(seen_before | set(got)) == list(range(1, HEAD + 1))
    assert not seen_before & set(got)


# --- bad frames and limits -----------------------------------------------------------------

BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("invalid_json", "{not json", "bad_json"),
    ("not_an_object", "[1, 2]", "invalid_message"),
    ("unknown_type", '{"type": "frobnicate", "id": "bad"}', "unknown_type"),
    ("missing_type", '{"id": "bad"}', "invalid_message"),
    ("missing_field", '{"type": "subscribe", "id": "bad"}', "invalid_message"),
    ("wrong_type", '{"type": "subscribe", "thread_id": 3, "id": "bad"}', "invalid_message"),
    ("negative_seq", '{"type":"subscribe","thread_id":"t","after_seq":-1}', "invalid_message"),
    ("unknown_field", '{"type": "ping", "id": "bad", "x": 1}', "invalid_message"),
    ("binary", b'{"type": "ping", "id": "bad"}', "invalid_message"),
    ("empty_text", "", "bad_json"),
]


@pytest.mark.parametrize(("name", "data", "code"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
async def test_bad_frame_gets_its_code_and_neighbours_are_unaffected(
    ws_server: LiveServer, name: str, data: str | bytes, code: str
) -> None:
    good = await ws_server.connect()
    bad = await ws_server.connect()
    accepted = await request(good, type="start_agent", agent="countdown", message="10 5")
    for _ in range(3):
        await bad.send(data)
        reply = await recv_control(bad)
        assert reply["type"] == "error", reply
        assert reply["code"] == code
        assert "Traceback" not in reply["message"]
        expected_ref = "bad" if '"id": "bad"' in str(data) else None
        assert reply["ref"] == expected_ref
    assert (await request(bad, type="ping"))["type"] == "pong"  # still open
    frames = await frames_until(good, is_terminal_of(accepted["run_id"]))
    assert seqs(frames) == list(range(1, 13))


@pytest.mark.parametrize("enforced_by", ["uvicorn", "handler"])
async def test_oversized_frame_closes_1009(make_ws_server: ServerFactory, enforced_by: str) -> None:
    limit = 64 * 1024
    server = await make_ws_server(
        ws_max_frame_bytes=limit,
        uvicorn_max_size=limit if enforced_by == "uvicorn" else 4 * 1024 * 1024,
    )
    neighbour = await server.connect()
    ws = await server.connect()
    await ws.send(json.dumps({"type": "ping", "pad": "x" * (1024 * 1024)}))
    await drain_until_closed(ws)
    assert ws.close_code == 1009
    assert (await request(neighbour, type="ping"))["type"] == "pong"


async def test_flood_is_rate_limited(make_ws_server: ServerFactory) -> None:
    server = await make_ws_server(ws_rate_per_s=5, ws_rate_burst=5)
    ws = await server.connect()
    for i in range(40):
        await send(ws, type="ping", id=i)
    replies = [await recv_control(ws) for _ in range(5)]  # the burst
    assert [r["type"] for r in replies] == ["pong"] * 5
    limited = await recv_control(ws)
    assert (limited["type"], limited["code"], limited["ref"]) == ("error", "rate_limited", 5)
    # The bucket refills (time is what refills it): the connection is still usable.
    await asyncio.sleep(seconds(0.8))
    pong = await request(ws, type="ping", id="after")
    assert pong["type"] == "pong"


async def test_slow_consumer_closed_4008_others_unaffected(
    make_ws_server: ServerFactory,
) -> None:
    server = await make_ws_server(ws_send_queue_bytes=64 * 1024, max_event_bytes=64 * 1024)
    good = await server.connect(batch=True)
    stalled = await StalledClient.connect(server)
    try:
        # First make the thread, then let the stalled client follow it live.
        first = await request(good, type="start_agent", agent="echo", message="x")
        await frames_until(good, is_terminal_of(first["run_id"]))
        await stalled.send(type="subscribe", thread_id=first["thread_id"], after_seq=3, id=1)
        await wait_until(
            lambda: following_live(server, first["thread_id"]) == 2,
            message="the stalled client follows the thread live",
        )
        accepted = await request(
            good,
            type="start_agent",
            agent="blob",
            message="1500 4000",
            thread_id=first["thread_id"],
        )
        frames = await frames_until(good, is_terminal_of(accepted["run_id"]), timeout=seconds(30))
        assert seqs(frames) == list(range(4, 4 + 1502))
        await wait_until(
            lambda: any(c.close_code == 4008 for c in server.ws_connections()),
            message="the stalled client closed as a slow consumer",
        )
        # Memory stays bounded: no connection ever queued more than the bound plus
        # one log batch (what a subscription may add in one step).
        peaks = [c.queued_peak_bytes for c in server.ws_connections()]
        assert len(peaks) == 2
        assert max(peaks) <= 64 * 1024 + 256 * 4100
        received, code = await stalled.read_all()
        assert code == 4008
        got = [f["seq"] for f in received if isinstance(f, dict) and "seq" in f]
        assert got == list(range(4, 4 + len(got)))  # in order, no gap, just cut short
        assert len(got) < 1502
    finally:
        stalled.close()


# --- shutdown (invariant 9) ----------------------------------------------------------------


@BOTH_LOGS
async def test_shutdown_drains_terminal_events_then_closes_1001(
    make_ws_server: ServerFactory, log_backend: str
) -> None:
    server = await make_ws_server(log_backend=log_backend)
    ws = await server.connect()
    accepted = await request(ws, type="start_agent", agent="countdown", message="1000 10")
    await frames_until(ws, lambda f: f.get("type") == "agent_thinking")
    await server.gateway.shutdown(grace_s=0)
    frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
    assert frames[-1]["type"] == "agent_cancelled"
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), seconds(5))
    assert ws.close_code == 1001


class BrokenConnection:
    """A connection whose drain and close hang forever (a stuck peer) or raise."""

    def __init__(self, *, hang: bool) -> None:
        self.user_id = "alice"
        self.connection_id = "ws_hangs" if hang else "ws_raises"
        self.hang = hang
        self.closes: list[int] = []

    async def drain(self, timeout: float) -> None:
        await self._fail()

    async def close(self, code: int, reason: str) -> None:
        self.closes.append(code)
        await self._fail()

    async def _fail(self) -> None:
        if self.hang:
            await asyncio.Event().wait()  # ignores its timeout: only a deadline ends it
        raise RuntimeError("broken connection (test)")


async def test_shutdown_is_bounded_when_connections_hang_or_fail(
    make_ws_server: ServerFactory,
) -> None:
    drain_s, close_s = seconds(0.3), seconds(0.3)
    server = await make_ws_server(shutdown_drain_s=drain_s, shutdown_close_s=close_s)
    good = [await server.connect(), await server.connect()]
    accepted = await request(good[0], type="start_agent", agent="countdown", message="1000 10")
    await request(good[1], type="subscribe", thread_id=accepted["thread_id"])
    await frames_until(good[0], lambda f: f.get("type") == "agent_thinking")
    broken = [BrokenConnection(hang=True), BrokenConnection(hang=False)]
    gateway = server.gateway
    gateway.connections.update(broken)
    # Grace 0: the run is cancelled at once; the connections phase is the one under test.
    bound = drain_s + close_s + seconds(1.0)
    assert gateway.shutdown_budget(0) >= bound - seconds(1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(gateway.shutdown(grace_s=0), 2 * bound)
    elapsed = loop.time() - started
    assert elapsed <= bound, f"shutdown took {elapsed:.2f}s, bound {bound:.2f}s"
    for ws in good:
        frames = await frames_until(ws, is_terminal_of(accepted["run_id"]))
        assert frames[-1]["type"] == "agent_cancelled"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), seconds(5))
        assert ws.close_code == 1001
    assert [b.closes for b in broken] == [[1001], [1001]]  # closed even after a failed drain
    assert not gateway.started
    assert gateway.engine.bridge.state is BridgeState.CLOSED


async def test_history_trimmed_under_a_lagging_subscription_is_announced(
    make_ws_server: ServerFactory,
) -> None:
    """Never a silent gap: trimmed-before-sent events yield an unsolicited ``subscribed``."""
    server = await make_ws_server(ws_send_queue_bytes=1024, max_event_bytes=1024, catchup_batch=1)
    runner = server.gateway.engine.runner
    ticket = await runner.start_run("alice", "blob", "3000 1000")  # no live reader: queue is tiny
    await runner.wait_idle()
    accepted = {"thread_id": ticket.thread_id}
    stalled = await StalledClient.connect(server)
    try:
        await stalled.send(type="subscribe", thread_id=accepted["thread_id"], id="s")
        # Catch-up stalls: the client reads nothing, so the send queue fills up.
        await wait_until(
            lambda: any(c._outbox.total_bytes >= 1024 for c in server.ws_connections()),
            message="the stalled client's send queue full",
        )
        await server.gateway.engine.log.trim(accepted["thread_id"], 2500)
        frames: list[Any] = []
        async with asyncio.timeout(seconds(20)):
            while not frames or frames[-1].get("seq") != 3002:
                got, _ = await stalled.read_some()
                frames.extend(got)
    finally:
        stalled.close()
    events = [f["seq"] for f in frames if "seq" in f]
    restarts = [f for f in frames if f.get("type") == "subscribed" and "ref" not in f]
    assert len(restarts) == 1
    assert restarts[0]["recovered"] is False
    assert restarts[0]["after_seq"] == 2499
    cut = events.index(2500)
    assert events[:cut] == list(range(1, cut + 1))  # contiguous up to the trim...
    assert events[cut:] == list(range(2500, 3003))  # ...then announced, then contiguous
