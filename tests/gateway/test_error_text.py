"""What a client is told about a failure never holds paths, DSNs or driver messages.

The event log's and the database's errors name files and connection strings
(``database /var/lib/… is not open``); the gateway answers ``unavailable`` with
the row's fixed meaning instead and logs the original (docs/architecture.md:
failures are loud to the operator, opaque to the client).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from agentcast.errors import ERRORS, ErrorCode, LogUnavailable
from agentcast.gateway.context import Gateway
from agentcast.gateway.problems import client_message
from agentcast.lifecycle import BridgeState
from tests.gateway.ws_support import LiveServer
from tests.gateway.wsutil import recv_control, send
from tests.utils import wait_until

from .conftest import start_run, wait_terminal

PATH = "/var/lib/agentcast-secret/agentcast.db"
DSN = "postgresql://u:pw@h/db"
CAUSE = f"database {PATH} is not open (replica {DSN}): disk I/O error"
MEANING = ERRORS[ErrorCode.UNAVAILABLE].meaning


def assert_clean(text: str) -> None:
    for secret in (PATH, DSN, "pw@", "disk I/O", "Traceback"):
        assert secret not in text, (secret, text)


def failing(*args: Any, **kwargs: Any) -> Any:
    raise LogUnavailable(CAUSE)


async def test_http_problem_hides_the_cause_and_the_log_has_it(
    alice: httpx.AsyncClient,
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accepted = await start_run(alice, agent="echo", message="kept")
    tid = accepted["thread_id"]
    before = await wait_terminal(alice, tid)

    async def info(*args: Any, **kwargs: Any) -> Any:
        raise LogUnavailable(CAUSE)

    caplog.set_level(logging.WARNING, logger="agentcast.gateway.problems")
    with monkeypatch.context() as m:
        m.setattr(gateway.engine.bridge, "info", info)
        m.setattr(gateway.engine.runner, "start_run", info)
        r = await alice.get(f"/v1/threads/{tid}/events")
        r2 = await alice.post("/v1/runs", json={"agent": "echo", "message": "x"})
    for resp in (r, r2):
        assert resp.status_code == 503, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        body = resp.json()
        assert (body["code"], body["detail"]) == ("unavailable", MEANING)
        assert resp.headers["retry-after"] == "1"
        assert_clean(resp.text)
    logged = [rec.getMessage() for rec in caplog.records]
    assert any(CAUSE in line and "alice" in line and "/events" in line for line in logged), logged
    # Nothing committed was lost: once the log answers again, every event is there.
    events = (await alice.get(f"/v1/threads/{tid}/events")).json()["events"]
    assert events == before


async def test_readyz_body_is_fixed_while_the_log_fails(
    alice: httpx.AsyncClient,
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = gateway.engine.bridge
    caplog.set_level(logging.INFO)
    with monkeypatch.context() as m:
        m.setattr(bridge.log, "info", failing)
        report = await bridge.check_health()
        assert not report.ok
        assert CAUSE in report.detail  # the bridge knows the cause…
        assert bridge.state is BridgeState.DEGRADED
        r = await alice.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {  # …the unauthenticated probe does not tell it
        "state": "degraded",
        "reason": "event log degraded; retrying",
        "last_probe": {
            "ok": False,
            "latency_ms": None,
            "detail": "probe failed",
            "checked_at": report.checked_at,
        },
    }
    assert_clean(r.text)
    assert any(CAUSE in rec.getMessage() for rec in caplog.records)
    await bridge.check_health()
    await wait_until(lambda: bridge.state is BridgeState.ACTIVE, message="bridge active again")
    r = await alice.get("/readyz")
    assert (r.status_code, r.json()["reason"]) == (200, "ready")


async def test_websocket_error_frame_hides_the_cause(
    ws_server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ws_server.gateway.engine.runner, "start_run", failing)
    ws = await ws_server.connect("alice")
    await send(ws, type="start_agent", id=7, agent="echo", message="hello")
    frame = await recv_control(ws)
    assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", 7)
    assert frame["message"] == MEANING
    assert_clean(str(frame))
    assert any(CAUSE in rec.getMessage() for rec in caplog.records)  # the server log has it


def test_client_message_rules() -> None:
    from agentcast.errors import InternalError, NotFound, Unavailable

    assert client_message(LogUnavailable(CAUSE)) == MEANING
    assert client_message(Unavailable(CAUSE)) == MEANING
    assert client_message(InternalError(CAUSE)) == ERRORS[ErrorCode.INTERNAL].meaning
    assert client_message(NotFound("no such run")) == "no such run"
    safe = Unavailable("full; retry", client_safe=True)
    assert client_message(safe) == "full; retry"
