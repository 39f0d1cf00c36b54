"""WebSocket, HTTP and SSE answer errors from the one table, ``agentcast.errors.ERRORS``.

Why: each transport used to carry its own copy of statuses, titles and close
codes. These tests drive real requests and compare the answers with the table's
rows, so a transport that stops reading the table fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
import websockets

from agentcast.errors import ERRORS, ErrorCode, InternalError
from agentcast.gateway.problems import PROBLEM_CONTENT_TYPE
from tests.gateway.conftest import ClientFactory
from tests.gateway.ws_support import LiveServer
from tests.gateway.wsutil import recv, request
from tests.utils import seconds


def assert_problem(response: httpx.Response, code: ErrorCode) -> dict[str, Any]:
    """``response`` is the problem document of ``code``'s row (status, title, type)."""
    spec = ERRORS[code]
    assert response.status_code == spec.http_status, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = response.json()
    assert (body["code"], body["title"], body["status"]) == (code, spec.title, spec.http_status)
    assert body["type"] == f"urn:agentcast:problem:{code}"
    assert ("retry-after" in response.headers) is spec.retryable
    return body


# --- HTTP ------------------------------------------------------------------------------


async def test_http_not_found_and_bad_json_come_from_the_table(alice: httpx.AsyncClient) -> None:
    assert_problem(await alice.get("/v1/runs/run_nope"), ErrorCode.NOT_FOUND)
    r = await alice.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(r, ErrorCode.BAD_JSON)


async def test_http_unauthorized_comes_from_the_table(client_for: ClientFactory) -> None:
    r = await client_for(user=None).get("/v1/agents")
    assert_problem(r, ErrorCode.UNAUTHORIZED)
    assert r.headers["www-authenticate"].startswith("Bearer ")


# --- SSE -------------------------------------------------------------------------------


async def test_sse_errors_are_problems_from_the_table(
    alice: httpx.AsyncClient, client_for: ClientFactory
) -> None:
    body = assert_problem(await alice.get("/v1/threads/th_nope/stream"), ErrorCode.NOT_FOUND)
    assert body["detail"] == "no such thread"
    r = await client_for(user=None).get("/v1/threads/th_nope/stream")
    assert_problem(r, ErrorCode.UNAUTHORIZED)


# --- WebSocket -------------------------------------------------------------------------


async def closed(ws: Any) -> None:
    """Read (and drop) frames until the server closes ``ws``."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(seconds(5)):
            while True:
                await ws.recv()


async def test_ws_error_frame_carries_the_tables_code(ws_server: LiveServer) -> None:
    ws = await ws_server.connect()
    reply = await request(ws, type="start_agent", agent="no_such_agent", message="hi")
    assert (reply["type"], reply["code"]) == ("error", ErrorCode.NOT_FOUND.value)


async def test_ws_internal_error_reveals_nothing(
    ws_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise InternalError("secret: the database password is hunter2")

    monkeypatch.setattr(ws_server.gateway.engine.runner, "start_run", boom)
    ws = await ws_server.connect()
    reply = await request(ws, type="start_agent", agent="echo", message="hi")
    assert (reply["code"], reply["message"]) == ("internal", "internal error")


async def test_ws_expiry_closes_with_the_unauthorized_rows_close_code(
    ws_server: LiveServer,
) -> None:
    ws = await ws_server.connect_raw(token=ws_server.token("alice", ttl_s=1))
    await recv(ws)
    await closed(ws)
    assert ws.close_code == ERRORS[ErrorCode.UNAUTHORIZED].close_code


async def test_ws_shutdown_closes_with_the_unavailable_rows_close_code(
    ws_server: LiveServer,
) -> None:
    ws = await ws_server.connect()
    await ws_server.gateway.shutdown(grace_s=0)
    await closed(ws)
    assert ws.close_code == ERRORS[ErrorCode.UNAVAILABLE].close_code
