"""A server's life: SIGKILL and restart, orderly SIGTERM, one writer per data directory."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.harness import (
    START_TIMEOUT_S,
    Server,
    Servers,
    cli,
    connect,
    events_until,
    events_until_terminal,
    read_until_closed,
    request,
)
from tests.utils import seconds

pytestmark = pytest.mark.slow

#: A countdown that never ends by itself while a test runs (100 000 steps of 50 ms):
#: the tests end it with a signal, so nothing depends on how fast the machine is.
ENDLESS_COUNTDOWN = "100000 50"


async def test_sigkill_mid_run_then_restart_resumes_without_gap(servers: Servers) -> None:
    first = servers.start()
    ws = await connect(first)
    accepted = await request(
        ws, {"type": "start_agent", "agent": "countdown", "message": ENDLESS_COUNTDOWN}, "start"
    )
    run_id, thread_id, epoch = accepted["run_id"], accepted["thread_id"], accepted["epoch"]
    seen = await events_until(ws, 4)
    last_seq = seen[-1]["seq"]
    assert [e["seq"] for e in seen] == list(range(1, last_seq + 1))

    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    await read_until_closed(ws)  # whatever was in flight; then the socket dies

    second = servers.start(first.data_dir)
    ws = await connect(second, first.token)
    try:
        subscribed = await request(
            ws,
            {"type": "subscribe", "thread_id": thread_id, "after_seq": last_seq, "epoch": epoch},
            "resume",
        )
        assert subscribed["type"] == "subscribed", subscribed
        assert subscribed["recovered"] is True
        assert subscribed["epoch"] == epoch
        assert subscribed["after_seq"] == last_seq
        rest = await events_until_terminal(ws, run_id)
    finally:
        await ws.close()

    assert [e["seq"] for e in rest] == list(range(last_seq + 1, last_seq + 1 + len(rest)))
    assert all(e["type"] == "agent_thinking" for e in rest[:-1])
    end = rest[-1]
    assert (end["type"], end["run_id"]) == ("agent_error", run_id)
    assert end["data"]["error_type"] == "interrupted"
    with second.http(first.token) as http:
        assert http.get(f"/v1/runs/{run_id}").json()["status"] == "failed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_delivers_terminal_events_then_closes_1001(
    servers: Servers, sig: signal.Signals
) -> None:
    server = servers.start(None, "--shutdown-grace", str(seconds(0.3)))
    ws = await connect(server)
    accepted = await request(
        ws, {"type": "start_agent", "agent": "countdown", "message": ENDLESS_COUNTDOWN}, "start"
    )
    run_id = accepted["run_id"]
    received = await events_until(ws, 2)

    server.signal(sig)
    rest, closed = await read_until_closed(ws)
    received += rest
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001
    assert server.wait() == 0, server.log()

    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    end = received[-1]
    assert (end["type"], end["run_id"]) == ("agent_cancelled", run_id)
    assert end["data"]["reason"] == "server shutting down"


def test_second_serve_on_the_same_data_dir_refuses(shared_server: Server, servers: Servers) -> None:
    second = servers.start(shared_server.data_dir, wait=False)
    code = second.wait(timeout=START_TIMEOUT_S)
    assert code != 0
    assert "locked" in second.log()
    assert str(shared_server.data_dir) in second.log()
    # The first server is unaffected.
    assert (
        cli(
            "agents", "--url", shared_server.url, "--data-dir", str(shared_server.data_dir)
        ).returncode
        == 0
    )
