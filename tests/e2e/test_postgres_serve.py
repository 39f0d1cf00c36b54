"""``agentcast serve --database-url``: the real server on PostgreSQL, end to end.

The schema comes from ``agentcast db upgrade`` (a server refuses a database
without it), the server prints the URL with its password masked, a SIGKILLed
server's successor resumes every thread where its clients were, and a second
server on the same database refuses to run agents beside the first.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e.harness import (
    START_TIMEOUT_S,
    Servers,
    cli,
    connect,
    events_until,
    events_until_terminal,
    read_until_closed,
    request,
)
from tests.pg_support import create_database, drop_database

pytestmark = pytest.mark.slow

ENDLESS_COUNTDOWN = "100000 50"
PASSWORD = "pw-s3cret"


@pytest_asyncio.fixture
async def bare_url() -> AsyncIterator[str]:
    """A database without agentcast's schema; its URL has a password (trust auth ignores it)."""
    url = await create_database(migrate=False)
    try:
        yield url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)
    finally:
        await drop_database(url)


async def test_serve_on_postgres_upgrade_resume_after_sigkill_and_one_runner(
    servers: Servers, bare_url: str
) -> None:
    refused = servers.start(None, "--database-url", bare_url, wait=False)
    assert await asyncio.to_thread(refused.wait, START_TIMEOUT_S) != 0
    assert "agentcast db upgrade" in refused.log()
    assert PASSWORD not in refused.log()

    upgraded = await asyncio.to_thread(cli, "db", "upgrade", "--database-url", bare_url)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr

    first = servers.start(None, "--database-url", bare_url)
    assert "postgres:***@" in first.log()
    assert PASSWORD not in first.log()
    ws = await connect(first)
    accepted = await request(
        ws, {"type": "start_agent", "agent": "countdown", "message": ENDLESS_COUNTDOWN}, "start"
    )
    run_id, thread_id, epoch = accepted["run_id"], accepted["thread_id"], accepted["epoch"]
    seen = await events_until(ws, 4)
    last_seq = seen[-1]["seq"]
    assert [e["seq"] for e in seen] == list(range(1, last_seq + 1))

    # A second server on the same database would end the first one's runs: refused.
    second = servers.start(None, "--database-url", bare_url, wait=False)
    assert await asyncio.to_thread(second.wait, START_TIMEOUT_S) != 0
    assert "already runs agents" in second.log()
    assert PASSWORD not in second.log()

    first.signal(signal.SIGKILL)
    assert await asyncio.to_thread(first.wait) == -signal.SIGKILL
    await read_until_closed(ws)

    # Another data directory: nothing of the first server's is needed but its token key.
    third = servers.start(first.data_dir, "--database-url", bare_url)
    ws = await connect(third, first.token)
    try:
        subscribed = await request(
            ws,
            {"type": "subscribe", "thread_id": thread_id, "after_seq": last_seq, "epoch": epoch},
            "resume",
        )
        assert subscribed["type"] == "subscribed", subscribed
        assert subscribed["recovered"] is True
        assert subscribed["epoch"] == epoch
        rest = await events_until_terminal(ws, run_id)
    finally:
        await ws.close()
    assert [e["seq"] for e in rest] == list(range(last_seq + 1, last_seq + 1 + len(rest)))
    end = rest[-1]
    assert (end["type"], end["run_id"]) == ("agent_error", run_id)
    assert end["data"]["error_type"] == "interrupted"
    with third.http(first.token) as http:
        assert http.get(f"/v1/runs/{run_id}").json()["status"] == "failed"
