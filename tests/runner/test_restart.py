"""Crash recovery across a real SIGKILL (docs/architecture.md invariants 2, 3 and 10)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.errors import DataDirLocked
from agentcast.store.base import RunStatus
from tests.invariants import assert_status_matches, decode_all
from tests.runner.helpers import test_registry, thread_events, wait_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def start_child(data_dir: Path) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.runner.crash_child", str(data_dir),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
    return child, json.loads(line)


async def test_sigkill_mid_run_then_restart(tmp_path: Path) -> None:
    child, seen = await start_child(tmp_path)
    try:
        # A second writer on the same data directory is refused while the first lives.
        with pytest.raises(DataDirLocked):
            await Engine(EngineSettings(data_dir=tmp_path), test_registry()).start()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    engine = Engine(EngineSettings(data_dir=tmp_path), test_registry())
    await engine.start()
    try:
        thread, parent, queued = str(seen["thread_id"]), str(seen["parent"]), str(seen["queued"])
        # A follower resumes from the last seq it saw, same epoch: recovered, no gap.
        follower = await engine.bridge.follow(thread, int(str(seen["seen"])), str(seen["epoch"]))
        assert follower.start.recovered is True
        assert follower.start.epoch == seen["epoch"]
        await wait_run(engine, "alice", queued)
        resumed = decode_all(await follower.next_batch(1000))
        await follower.aclose()

        events = await thread_events(engine, thread)  # contiguity + lifecycles
        before = events[: int(str(seen["seen"]))]
        assert resumed == events[len(before) :]
        sub = next(e.run_id for e in events if e.parent_run_id == parent)
        assert [(e.type, e.run_id) for e in events[len(before) :]] == [
            ("tool_completed", sub),
            ("agent_error", sub),
            ("agent_error", parent),
            ("agent_started", queued),
            ("agent_thinking", queued),
            ("agent_completed", queued),
        ]
        assert events[len(before)].data["status"] == "error"
        assert events[len(before) + 1].data["error_type"] == "interrupted"
        assert events[len(before) + 2].data["error_type"] == "interrupted"
        for run_id in (parent, sub, queued):
            record = await engine.store.get_run("alice", run_id)
            assert_status_matches(record, [e for e in events if e.run_id == run_id])
        assert (await engine.store.get_run("alice", parent)).status is RunStatus.FAILED
        assert (await engine.store.get_run("alice", queued)).status is RunStatus.COMPLETED
    finally:
        await engine.shutdown(grace_s=0)
