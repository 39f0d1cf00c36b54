"""Orderly shutdown (docs/architecture.md invariant 9): every run ends with its terminal event."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentcast.agents import builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.errors import Unavailable
from agentcast.store.base import RunStatus
from tests.runner.helpers import thread_events, types_of, wait_run
from tests.utils import wait_until


async def test_shutdown_lets_short_runs_finish_and_cancels_the_rest(tmp_path: Path) -> None:
    settings = EngineSettings(data_dir=tmp_path, max_runs_per_user=1)
    engine = Engine(settings, builtin_registry())
    await engine.start()
    short = await engine.runner.start_run("alice", "countdown", "3 30")
    long = await engine.runner.start_run("bob", "countdown", "100 50")
    queued = await engine.runner.start_run("alice", "echo", "waiting")  # alice's 2nd: queued
    await wait_until(lambda: engine.runner.running_count == 2)
    await engine.shutdown(grace_s=0.5)
    with pytest.raises(Unavailable):
        await engine.runner.start_run("alice", "echo", "too late")

    reopened = Engine(settings, builtin_registry())
    await reopened.start()
    try:
        assert (await wait_run(reopened, "alice", short.run_id)).status is RunStatus.COMPLETED
        long_events = await thread_events(reopened, long.thread_id)
        assert long_events[-1].type == "agent_cancelled"
        assert long_events[-1].data["reason"] == "server shutting down"
        queued_events = await thread_events(reopened, queued.thread_id)
        assert types_of(queued_events) == ["agent_started", "agent_cancelled"]
        for user, ticket in (("bob", long), ("alice", queued)):
            record = await reopened.store.get_run(user, ticket.run_id)
            assert record.status is RunStatus.CANCELLED
        assert await reopened.store.active_runs() == []
    finally:
        await reopened.shutdown(grace_s=0)


async def test_queued_runs_do_not_hold_shutdown_for_the_grace_period(tmp_path: Path) -> None:
    engine = Engine(EngineSettings(data_dir=tmp_path, max_runs_per_user=1), builtin_registry())
    await engine.start()
    await engine.runner.start_run("alice", "countdown", "2 20")
    await engine.runner.start_run("alice", "echo", "queued behind it")
    started = time.monotonic()
    await engine.shutdown(grace_s=10)
    assert time.monotonic() - started < 2
