"""The SSE stream over a real server: subscribed first, ids are seqs, resume, recovery, endings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from agentcast.gateway import sse as sse_module
from agentcast.gateway.context import Gateway
from agentcast.gateway.sse import SSEConnection
from tests.utils import seconds, wait_until

from .conftest import BOTH_LOGS, gateway_of, start_run, wait_terminal


@dataclass
class Message:
    """One SSE message (``comment`` for a ``:`` line)."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class Stream:
    """Parses an SSE response into :class:`Message` objects."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float | None = None) -> Message:
        async with asyncio.timeout(seconds(5.0) if timeout is None else timeout):
            msg = Message()
            while True:
                line = await anext(self._lines)
                if line == "":
                    if msg != Message():
                        return msg
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    return Message(comment=value)
                setattr(msg, field, value)

    async def events_until(self, seq: int) -> list[Message]:
        out = []
        while True:
            msg = await self.next()
            if msg.comment is not None:
                continue
            out.append(msg)
            if msg.id is not None and int(msg.id) >= seq:
                return out

    async def ended(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(seconds(5.0) if timeout is None else timeout):
                async for _ in self._lines:
                    pass
        except TimeoutError:
            return False
        return True


@pytest.fixture
def token(gateway: Gateway) -> str:
    return gateway.auth.mint_token("alice")


@pytest.fixture
async def http(live_url: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=live_url, headers={"authorization": f"Bearer {token}"}, timeout=seconds(5)
    ) as client:
        yield client


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, thread_id: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with client.stream(
        "GET", f"/v1/threads/{thread_id}/stream", params=params, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        yield Stream(response)


async def finished_thread(client: httpx.AsyncClient, steps: int = 5) -> tuple[str, str]:
    """A thread holding one finished countdown run: seqs 1..steps+2."""
    accepted = await start_run(client, agent="countdown", message=f"{steps} 0")
    await wait_terminal(client, accepted["thread_id"], accepted["run_id"])
    return accepted["thread_id"], accepted["epoch"]


@BOTH_LOGS
async def test_subscribed_first_then_events_with_seq_ids(http: httpx.AsyncClient) -> None:
    tid, epoch = await finished_thread(http)
    async with sse(http, tid) as stream:
        first = await stream.next()
        assert first.event == "subscribed"
        assert first.id is None
        assert first.json() == {
            "thread_id": tid, "epoch": epoch, "after_seq": 0, "recovered": True,
        }  # fmt: skip
        messages = await stream.events_until(7)
    assert [m.id for m in messages] == [str(i) for i in range(1, 8)]
    assert [m.event for m in messages] == ["agent_started"] + ["agent_thinking"] * 5 + [
        "agent_completed"
    ]
    for m in messages:
        envelope = m.json()
        assert str(envelope["seq"]) == m.id
        assert envelope["type"] == m.event
        assert envelope["thread_id"] == tid


@BOTH_LOGS
async def test_live_events_follow_catch_up(http: httpx.AsyncClient) -> None:
    tid, _ = await finished_thread(http, steps=1)
    async with sse(http, tid, after_seq=3) as stream:
        assert (await stream.next()).json()["after_seq"] == 3
        accepted = await start_run(http, agent="countdown", message="3 10", thread_id=tid)
        assert accepted["after_seq"] == 3
        messages = await stream.events_until(8)
    assert [int(m.id or 0) for m in messages] == [4, 5, 6, 7, 8]
    assert {m.json()["run_id"] for m in messages} == {accepted["run_id"]}


@BOTH_LOGS
async def test_resume_with_last_event_id_gives_exactly_the_rest(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    tid, epoch = await finished_thread(http)
    gateway.settings.sse_keepalive_s = 0.2
    headers = {"last-event-id": "4"}
    # Last-Event-ID wins over ?after_seq= (EventSource keeps the original URL).
    async with sse(http, tid, headers=headers, after_seq=1, epoch=epoch) as stream:
        first = await stream.next()
        assert first.json() == {"thread_id": tid, "epoch": epoch, "after_seq": 4, "recovered": True}
        assert [m.id for m in await stream.events_until(7)] == ["5", "6", "7"]
        # Nothing else: the next thing on the wire is a keepalive comment.
        assert (await stream.next()).comment == "keepalive"


async def test_resume_at_head_then_live(http: httpx.AsyncClient) -> None:
    tid, epoch = await finished_thread(http, steps=1)
    async with sse(http, tid, after_seq=3, epoch=epoch) as stream:
        assert (await stream.next()).json()["recovered"] is True
        await start_run(http, agent="echo", message="more", thread_id=tid)
        assert [m.id for m in await stream.events_until(6)] == ["4", "5", "6"]


@pytest.mark.parametrize(
    ("name", "params", "trim_before", "expected_after"),
    [
        ("epoch_changed", {"after_seq": 3, "epoch": "stale"}, None, 0),
        ("beyond_head", {"after_seq": 99}, None, 0),
        ("position_trimmed", {"after_seq": 1}, 4, 3),
        ("epoch_changed_after_trim", {"after_seq": 5, "epoch": "stale"}, 4, 3),
    ],
)
@BOTH_LOGS
async def test_unrecoverable_positions_restart_from_first_retained(
    http: httpx.AsyncClient,
    gateway: Gateway,
    name: str,
    params: dict[str, Any],
    trim_before: int | None,
    expected_after: int,
) -> None:
    tid, epoch = await finished_thread(http)
    if trim_before is not None:
        await gateway.engine.log.trim(tid, trim_before)
    async with sse(http, tid, **params) as stream:
        first = await stream.next()
        assert first.json() == {
            "thread_id": tid, "epoch": epoch, "after_seq": expected_after, "recovered": False,
        }  # fmt: skip
        messages = await stream.events_until(7)
    assert [int(m.id or 0) for m in messages] == list(range(expected_after + 1, 8))


async def test_trimmed_position_with_the_last_event_id(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    tid, epoch = await finished_thread(http)
    await gateway.engine.log.trim(tid, 6)
    async with sse(http, tid, headers={"last-event-id": "2"}, epoch=epoch) as stream:
        assert (await stream.next()).json()["after_seq"] == 5
        assert [m.id for m in await stream.events_until(7)] == ["6", "7"]


async def test_client_disconnect_ends_the_follower(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    tid, _ = await finished_thread(http, steps=1)
    tasks_before = len(asyncio.all_tasks())
    async with sse(http, tid) as stream:
        await stream.events_until(3)
        await wait_until(lambda: len(gateway.connections) == 1)
        (conn,) = gateway.connections
        assert getattr(conn, "transport", None) == "sse"
        metrics = (await http.get("/metrics")).text
        assert 'agentcast_open_connections{transport="sse"} 1.0' in metrics
    await wait_until(lambda: not gateway.connections, message="the SSE connection to end")
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, message="no leaked tasks")


@BOTH_LOGS
async def test_shutdown_drains_then_ends_the_stream(live_url: str, app: Starlette) -> None:
    gateway = gateway_of(app)
    token = gateway.auth.mint_token("alice")
    async with httpx.AsyncClient(
        base_url=live_url, headers={"authorization": f"Bearer {token}"}, timeout=seconds(5)
    ) as client:
        accepted = await start_run(client, agent="countdown", message="1000 10")
        async with sse(client, accepted["thread_id"]) as stream:
            await stream.events_until(2)
            await gateway.shutdown(grace_s=0)
            rest = []
            async for line in stream._lines:
                rest.append(line)
        # The run was cancelled, and its terminal event was delivered before the end.
        assert "event: agent_cancelled" in rest
        assert not gateway.connections


async def test_stream_ends_when_the_token_expires(
    live_url: str, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = gateway.auth.mint_token("alice", ttl_s=60)
    async with httpx.AsyncClient(
        base_url=live_url, headers={"authorization": f"Bearer {token}"}, timeout=seconds(5)
    ) as client:
        tid, _ = await finished_thread(client, steps=1)
        # The stream's clock runs 59.5 s ahead: the token expires half a second in.
        monkeypatch.setattr(sse_module, "time", SimpleNamespace(time=lambda: time.time() + 59.5))
        async with sse(client, tid) as stream:
            await stream.events_until(3)
            assert await stream.ended(timeout=seconds(3))


async def test_bad_last_event_id_and_unknown_thread(http: httpx.AsyncClient) -> None:
    tid, _ = await finished_thread(http, steps=1)
    r = await http.get(f"/v1/threads/{tid}/stream", headers={"last-event-id": "abc"})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    r = await http.get(f"/v1/threads/{tid}/stream", params={"after_seq": "-2"})
    assert r.status_code == 400
    r = await http.get("/v1/threads/th_nope/stream")
    assert (r.status_code, r.json()["detail"]) == (404, "no such thread")


@BOTH_LOGS
async def test_history_trimmed_under_a_lagging_stream_resubscribes(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Events trimmed before the stream read them: a new ``subscribed``, never a silent gap."""
    tid, epoch = await finished_thread(http)
    follower = await gateway.engine.bridge.follow(tid, 0, epoch)
    await gateway.engine.log.trim(tid, 4)
    principal = await gateway.auth.verify_token(gateway.auth.mint_token("alice"))
    conn = SSEConnection(gateway, principal, tid, follower)
    body = bytearray()
    disconnect = asyncio.Event()

    async def receive() -> Any:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            body.extend(message["body"])
            if b"id: 7\n" in body:
                disconnect.set()

    await asyncio.wait_for(conn({"type": "http"}, receive, send), seconds(5))
    text = body.decode()
    subscribed = [
        json.loads(line[6:]) for line in text.splitlines() if line.startswith('data: {"thread_id')
    ]
    assert [s["recovered"] for s in subscribed] == [True, False]
    assert subscribed[1]["after_seq"] == 3
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [4, 5, 6, 7]
    assert not gateway.connections
