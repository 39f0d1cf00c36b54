"""The bridge: single source of truth, honest health, recovery (docs/architecture.md 7, 8, 9)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agentcast.bridge import HEALTH_THREAD, Bridge
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.errors import InvalidEvent, Unavailable
from agentcast.lifecycle import BridgeState
from agentcast.log.memory import MemoryLog
from agentcast.store.memory import MemoryStore
from tests.flaky import FlakyLog
from tests.invariants import assert_contiguous, decode_all
from tests.runner.helpers import wait_run
from tests.utils import wait_until

FAST = EngineSettings(
    log_backend="memory",
    health_interval_s=3600,
    recovery_base_s=0.01,
    recovery_max_s=0.04,
    recovery_attempts=4,
    probe_timeout_s=0.5,
    init_timeout_s=1.0,
)


async def emit(bridge: Bridge, n: int, thread: str = "th_1") -> object:
    return await bridge.emit(
        thread_id=thread, run_id="r1", event_type="custom", data={"name": "n", "value": n}
    )


async def test_ensure_integration_once_under_100_concurrent_callers() -> None:
    log = FlakyLog()
    log.open_delay = 0.05
    bridge = Bridge(log, FAST)
    await asyncio.gather(*(bridge.ensure_integration() for _ in range(100)))
    assert log.open_calls == 1
    assert bridge.state is BridgeState.ACTIVE
    await bridge.ensure_integration()
    assert log.open_calls == 1
    await bridge.close()
    assert bridge.state is BridgeState.CLOSED
    with pytest.raises(Unavailable):
        await bridge.ensure_integration()


async def test_init_timeout_fails_then_a_retry_succeeds() -> None:
    log = FlakyLog()
    log.open_delay = 5
    bridge = Bridge(log, FAST.with_(init_timeout_s=0.1))
    with pytest.raises(Unavailable, match="timed out"):
        await bridge.ensure_integration()
    assert bridge.state is BridgeState.FAILED
    log.open_delay = 0
    await bridge.ensure_integration()
    assert bridge.state is BridgeState.ACTIVE
    await bridge.close()


async def test_invalid_events_are_rejected_and_never_appended() -> None:
    log = FlakyLog()
    bridge = Bridge(log, FAST)
    await bridge.ensure_integration()
    calls = log.append_calls
    with pytest.raises(InvalidEvent):
        await bridge.emit(thread_id="t", run_id="r", event_type="agent_thinking", data={})
    with pytest.raises(InvalidEvent):
        await bridge.emit(thread_id="t", run_id="r", event_type="made_up", data={})
    assert log.append_calls == calls
    assert await log.read("t") == []
    await bridge.close()


async def test_emit_before_start_and_after_close_is_refused() -> None:
    bridge = Bridge(FlakyLog(), FAST)
    with pytest.raises(Unavailable):
        await emit(bridge, 1)
    await bridge.ensure_integration()
    await emit(bridge, 1)
    await bridge.close()
    with pytest.raises(Unavailable):
        await emit(bridge, 2)


async def test_outage_pauses_emitters_then_flushes_in_order() -> None:
    log = FlakyLog()
    bridge = Bridge(log, FAST.with_(recovery_attempts=1000))
    states: list[BridgeState] = []
    bridge.add_state_observer(lambda old, new, why: states.append(new))
    await bridge.ensure_integration()
    await emit(bridge, 0)
    log.fail_append = True
    pending = [asyncio.create_task(emit(bridge, i)) for i in range(1, 51)]
    await wait_until(lambda: bridge.state is BridgeState.DEGRADED)
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in pending), "emit() must wait while the log is away"
    assert "append" in bridge.faults
    log.fail_append = False
    await asyncio.gather(*pending)
    assert bridge.state is BridgeState.ACTIVE
    assert states == [
        BridgeState.INITIALIZING, BridgeState.ACTIVE, BridgeState.DEGRADED, BridgeState.ACTIVE,
    ]  # fmt: skip
    events = decode_all(await log.read("th_1", 0, 1000))
    assert_contiguous(events)
    assert [e.data["value"] for e in events] == list(range(51))
    assert bridge.metrics.recoveries._value.get() == 1
    await bridge.close()


async def test_exhausted_recovery_is_failed_refuses_runs_and_comes_back() -> None:
    log = FlakyLog()
    store = MemoryStore()
    engine = Engine(FAST, log=log, store=store)
    log.inner = MemoryLog(projector=store.project)
    await engine.start()
    bridge = engine.bridge
    log.fail_append = True
    waiting = asyncio.create_task(emit(bridge, 1))
    await wait_until(lambda: bridge.state is BridgeState.FAILED, within=5)
    with pytest.raises(Unavailable):
        await engine.runner.start_run("alice", "echo", "refused")
    assert not waiting.done()
    log.fail_append = False
    await waiting
    assert bridge.state is BridgeState.ACTIVE
    ticket = await engine.runner.start_run("alice", "echo", "accepted again")
    await wait_run(engine, "alice", ticket.run_id)
    await engine.shutdown()


async def test_health_probe_goes_through_the_follow_path() -> None:
    log = FlakyLog()
    bridge = Bridge(log, FAST)
    await bridge.ensure_integration()
    report = await bridge.check_health()
    assert report.ok
    assert report.latency_ms is not None
    log.fail_follow = True
    report = await bridge.check_health()
    assert not report.ok
    assert bridge.state is BridgeState.DEGRADED
    assert "probe" in bridge.faults
    log.fail_follow = False
    await wait_until(lambda: bridge.state is BridgeState.ACTIVE, message="probe recovery")
    assert bridge.metrics.health_checks.labels(result="failure")._value.get() >= 1
    # Canaries live on the reserved stream, never a user's.
    assert (await log.info(HEALTH_THREAD)).last_seq >= 2
    await bridge.close()


async def test_a_dead_watched_task_degrades_and_the_health_loop_is_restarted() -> None:
    bridge = Bridge(FlakyLog(), FAST)
    await bridge.ensure_integration()

    async def dies() -> None:
        raise RuntimeError("listener crashed")

    task = asyncio.create_task(dies())
    bridge.watch(task, "listener")
    states: list[BridgeState] = []
    bridge.add_state_observer(lambda old, new, why: states.append(new))
    await wait_until(lambda: bridge.metrics.task_failures.labels(task="listener")._value.get() == 1)
    await wait_until(lambda: bridge.state is BridgeState.ACTIVE, message="a passing probe")
    assert states == [BridgeState.DEGRADED, BridgeState.ACTIVE]

    original = bridge.check_health
    calls = 0

    async def broken_once():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("health loop bug")
        return await original()

    bridge.check_health = broken_once  # type: ignore[method-assign]
    bridge.request_health_check()
    await wait_until(lambda: bridge.metrics.task_failures.labels(task="health")._value.get() == 1)
    await wait_until(lambda: calls >= 2 and bridge.state is BridgeState.ACTIVE, within=5)
    await bridge.close()


async def test_close_drains_buffered_events() -> None:
    log = FlakyLog()
    bridge = Bridge(log, FAST)
    await bridge.ensure_integration()
    tasks = [asyncio.create_task(emit(bridge, i)) for i in range(200)]
    await asyncio.sleep(0)
    await bridge.close()
    stored = await asyncio.gather(*tasks)
    events = decode_all(stored)  # type: ignore[arg-type]
    assert_contiguous(events)
    assert [e.data["value"] for e in events] == list(range(200))


async def test_close_with_the_log_down_fails_pending_emits_loudly() -> None:
    log = FlakyLog()
    bridge = Bridge(log, FAST.with_(recovery_attempts=1000))
    await bridge.ensure_integration()
    log.fail_append = True
    task = asyncio.create_task(emit(bridge, 1))
    await wait_until(lambda: bridge.state is BridgeState.DEGRADED)
    await bridge.close(drain_timeout=0.05)
    with pytest.raises(Unavailable):
        await task


async def test_metrics_count_events_by_type() -> None:
    bridge = Bridge(FlakyLog(), FAST)
    await bridge.ensure_integration()
    for i in range(3):
        await emit(bridge, i)
    text = bridge.metrics.render().decode()
    assert 'agentcast_events_emitted_total{type="custom"} 3.0' in text
    assert 'agentcast_bridge_state{state="active"} 1.0' in text
    await bridge.close()


async def test_a_commit_lost_in_transit_is_retried_and_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT is durable but reports an error: the retry finds the event, never adds a second.

    Fresh event ids skip the log's look-up of stored ids; a retried batch must
    not, or the unique index would reject the retry as a duplicate.
    """
    settings = FAST.with_(log_backend="sqlite", data_dir=tmp_path / "data")
    engine = Engine(settings)
    await engine.start()
    try:
        db = engine.db
        assert db is not None
        lost: list[bool] = []
        real_commit = db._commit

        def commit_then_fail_once(conn: sqlite3.Connection) -> None:
            real_commit(conn)
            if not lost:
                lost.append(True)
                raise sqlite3.OperationalError("disk I/O error after the commit (injected)")

        monkeypatch.setattr(db, "_commit", commit_then_fail_once)
        stored = await emit(engine.bridge, 1)
        monkeypatch.undo()
        assert lost == [True]
        events = await engine.log.read("th_1")
        assert [(e.seq, e.event_id) for e in events] == [(1, stored.event_id)]  # type: ignore[attr-defined]
        assert engine.metrics.append_failures._value.get() == 1
    finally:
        await engine.shutdown()
