"""The request-metrics middleware: template labels, and SSE streams passed through unbuffered."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette

from agentcast.gateway.sse import SSE_PATH
from tests.utils import seconds

from .conftest import gateway_of, start_run, wait_terminal


async def test_a_route_with_an_id_is_counted_under_its_template(
    app: Starlette, alice: httpx.AsyncClient
) -> None:
    metrics = gateway_of(app).metrics
    r = await alice.get("/v1/runs/run_nope")
    assert r.status_code == 404
    r = await alice.get("/healthz")
    assert r.status_code == 200
    assert metrics.requests("/v1/runs/{run_id}", 404) == 1
    assert metrics.requests("/healthz", 200) == 1
    text = (await alice.get("/metrics")).text
    assert 'agentcast_http_requests_total{route="/v1/runs/{run_id}",status="404"} 1.0' in text
    assert "run_nope" not in text  # no raw path, no id in any label


async def test_an_unmatched_path_is_not_counted(app: Starlette, alice: httpx.AsyncClient) -> None:
    r = await alice.get("/v1/no/such/route/th_123")
    assert r.status_code == 404
    text = (await alice.get("/metrics")).text
    assert "th_123" not in text
    assert "/v1/no/such" not in text


async def test_an_sse_stream_is_not_buffered(app: Starlette, alice: httpx.AsyncClient) -> None:
    """The first SSE bytes reach the client while the stream is still open.

    The app is driven at the ASGI level (httpx's ASGI transport collects the
    whole body): a middleware that buffered would hold ``subscribed`` back
    until the stream ended, i.e. until the disconnect below.
    """
    gateway = gateway_of(app)
    accepted = await start_run(alice, agent="countdown", message="2 0")
    await wait_terminal(alice, accepted["thread_id"], accepted["run_id"])
    thread_id = accepted["thread_id"]
    token = gateway.auth.mint_token("alice")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/threads/{thread_id}/stream",
        "raw_path": f"/v1/threads/{thread_id}/stream".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    messages: list[dict[str, Any]] = []
    got_subscribed = asyncio.Event()
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        messages.append(message)
        if b"event: subscribed" in message.get("body", b""):
            got_subscribed.set()

    call = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(got_subscribed.wait(), seconds(5))
        assert not call.done()  # still streaming: nothing held back until the end
        assert messages[0]["type"] == "http.response.start"
        assert messages[0]["status"] == 200
        # Counted when the stream opened, under the template, not the thread id.
        assert gateway.metrics.requests(SSE_PATH, 200) == 1
    finally:
        disconnect.set()
        await asyncio.wait_for(call, seconds(5))
    assert gateway.metrics.requests(SSE_PATH, 200) == 1
