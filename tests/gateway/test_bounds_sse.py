"""SSE bounds: positions beyond a 64-bit seq, and connections per user.

Over a real uvicorn server (tests/gateway/ws_support.py), so streams are real
streams and a client going away is a real disconnect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.gateway.ws_support import LiveServer, ServerFactory
from tests.utils import seconds, wait_until

INT64_MAX = 2**63 - 1


async def make_thread(server: LiveServer, user: str, message: str) -> tuple[str, int]:
    """A thread of ``user`` with one finished echo run; its id and head."""
    runner = server.gateway.engine.runner
    ticket = await runner.start_run(user, "echo", message)
    await runner.wait_idle()
    head = (await server.gateway.engine.bridge.info(ticket.thread_id)).last_seq
    return ticket.thread_id, head


@asynccontextmanager
async def http_for(server: LiveServer, user: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {server.token(user)}"}
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=seconds(10)) as client:
        yield client


async def messages_until(response: httpx.Response, last_seq: int) -> list[dict[str, Any]]:
    """The ``subscribed`` and event messages (``data`` decoded, ``id`` added) up to ``last_seq``."""
    out: list[dict[str, Any]] = []
    current: dict[str, str] = {}
    async with asyncio.timeout(seconds(5)):
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
                continue
            if "data" in current:
                message = {"event": current.get("event"), "id": current.get("id")}
                message["data"] = json.loads(current["data"])
                out.append(message)
                if current.get("id") is not None and int(current["id"]) >= last_seq:
                    return out
            current = {}
    raise AssertionError("the stream ended early")


def event_seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["id"]) for m in messages if m["id"] is not None]


@pytest.mark.parametrize("log_backend", ["memory", "sqlite"])
async def test_positions_beyond_int64_are_invalid_message(
    make_ws_server: ServerFactory, log_backend: str
) -> None:
    server = await make_ws_server(log_backend=log_backend)
    thread_id, head = await make_thread(server, "alice", "x")
    path = f"/v1/threads/{thread_id}/stream"
    async with http_for(server, "alice") as http:
        for value in (str(INT64_MAX + 1), str(2**64), "9" * 40, "-1", "seven"):
            r = await http.get(path, headers={"last-event-id": value})
            assert r.status_code == 400, (value, r.text)
            assert r.json()["code"] == "invalid_message"
        # ?after_seq= too (bounded by query_int, like every integer query value).
        r = await http.get(path, params={"after_seq": str(INT64_MAX + 1)})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_message"), r.text
        assert server.gateway.user_connections.count("alice") == 0  # refused before a slot
        # The largest seq is a position: beyond the head, so delivery restarts from 1.
        async with http.stream("GET", path, headers={"last-event-id": str(INT64_MAX)}) as stream:
            assert stream.status_code == 200
            messages = await messages_until(stream, head)
    subscribed = messages[0]
    assert subscribed["event"] == "subscribed"
    assert (subscribed["data"]["recovered"], subscribed["data"]["after_seq"]) == (False, 0)
    assert event_seqs(messages) == list(range(1, head + 1))


async def test_sse_connections_per_user_are_bounded_and_released(
    make_ws_server: ServerFactory,
) -> None:
    server = await make_ws_server(max_connections_per_user=2)
    thread_id, head = await make_thread(server, "alice", "x")
    bob_thread, bob_head = await make_thread(server, "bob", "y")
    path = f"/v1/threads/{thread_id}/stream"
    users = server.gateway.user_connections
    async with http_for(server, "alice") as http, http_for(server, "bob") as bob:
        async with (
            http.stream("GET", path, params={"after_seq": head}) as first,
            http.stream("GET", path, params={"after_seq": head}) as second,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            assert users.count("alice") == 2
            over = await http.get(path)
            assert over.status_code == 429
            problem = over.json()
            assert (problem["code"], problem["limit"]) == (
                "limit_exceeded",
                "max_connections_per_user",
            )
            assert server.gateway.metrics.refusals("max_connections_per_user") == 1
            # Another user is unaffected.
            async with bob.stream("GET", f"/v1/threads/{bob_thread}/stream") as theirs:
                assert theirs.status_code == 200
                assert event_seqs(await messages_until(theirs, bob_head)) == list(
                    range(1, bob_head + 1)
                )
            # The open streams go on: a new run arrives whole, in order, on both.
            ticket = await server.gateway.engine.runner.start_run(
                "alice", "echo", "again", thread_id
            )
            await server.gateway.engine.runner.wait_idle()
            end = (await server.gateway.engine.bridge.info(ticket.thread_id)).last_seq
            for stream in (first, second):
                got = event_seqs(await messages_until(stream, end))
                assert got == list(range(head + 1, end + 1))
        # Both streams ended (the client went away): their places are given back.
        await wait_until(lambda: users.count("alice") == 0, message="SSE slots released")
        async with http.stream("GET", path, params={"after_seq": end}) as again:
            assert again.status_code == 200
            assert users.count("alice") == 1
