"""Retention (docs/event-log.md, "Retention"), on the memory and the SQLite log.

Every test drives passes with ``sweep_once()`` and an injected clock (no test
waits for an interval or an age), except one that checks the engine's own
background task. Each checks that the bound holds, exactly which events
remain (in order, no gap), that thread, run and message rows stay, and that
another user's thread is untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from agentcast.agents import RunContext, builtin_registry
from agentcast.bridge import HEALTH_THREAD
from agentcast.engine import Engine
from agentcast.errors import LogUnavailable
from agentcast.log.base import EventLog, StoredEvent
from agentcast.log.follower import HistoryLost
from agentcast.retention import RetentionPolicy, RetentionSweeper, boundaries, plan_cut
from agentcast.store.base import NewRun, RunSpan, RunStatus
from agentcast.types import new_run_id
from tests.conftest import EngineFactory
from tests.runner.helpers import wait_run
from tests.utils import seconds, wait_until, within

DONE: dict[str, Any] = {"status": "success", "final_response": "done", "duration_ms": 1}


async def emit(engine: Engine, thread_id: str, run_id: str, kind: str, **kw: Any) -> int:
    """Emit one event of ``run_id`` (``parent`` names its parent run); return its seq."""
    parent = kw.pop("parent", None)
    data: dict[str, Any] = {
        "agent_started": {"message": "go"},
        "agent_thinking": {"reasoning": "r"},
        "agent_completed": DONE,
    }[kind]
    stored = await engine.bridge.emit(
        thread_id=thread_id, run_id=run_id, event_type=kind, data=data, parent_run_id=parent
    )
    return stored.seq


async def new_run(engine: Engine, user: str, thread_id: str, parent: str | None = None) -> str:
    record, _ = await engine.store.create_run(
        NewRun(new_run_id(), thread_id, user, "echo", "go", parent_run_id=parent)
    )
    return record.run_id


async def whole_run(engine: Engine, user: str, thread_id: str, thinking: int = 1) -> str:
    """A completed top-level run: started, ``thinking`` thinking events, completed."""
    run_id = await new_run(engine, user, thread_id)
    await emit(engine, thread_id, run_id, "agent_started")
    for _ in range(thinking):
        await emit(engine, thread_id, run_id, "agent_thinking")
    await emit(engine, thread_id, run_id, "agent_completed")
    return run_id


async def run_with_sub_run(engine: Engine, user: str, thread_id: str) -> tuple[str, str]:
    """A completed run whose sub-run's events sit inside its own (6 events)."""
    parent = await new_run(engine, user, thread_id)
    await emit(engine, thread_id, parent, "agent_started")
    child = await new_run(engine, user, thread_id, parent=parent)
    await emit(engine, thread_id, child, "agent_started", parent=parent)
    await emit(engine, thread_id, parent, "agent_thinking")
    await emit(engine, thread_id, child, "agent_thinking", parent=parent)
    await emit(engine, thread_id, child, "agent_completed", parent=parent)
    await emit(engine, thread_id, parent, "agent_completed")
    return parent, child


def sweeper(
    engine: Engine, clock: Callable[[], float] = time.time, **policy: Any
) -> RetentionSweeper:
    return RetentionSweeper(
        engine.log, engine.store, RetentionPolicy(**policy), metrics=engine.metrics, clock=clock
    )


def trimmed_total(engine: Engine) -> float:
    return engine.metrics.registry.get_sample_value("agentcast_events_trimmed_total") or 0.0


def sweeps(engine: Engine, result: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "agentcast_retention_sweeps_total", {"result": result}
    )
    return value or 0.0


async def all_events(engine: Engine, thread_id: str) -> list[StoredEvent]:
    return await engine.log.read(thread_id, 0, 100_000)


def seqs(events: list[StoredEvent]) -> list[int]:
    return [e.seq for e in events]


async def rows(engine: Engine, user: str, thread_id: str) -> tuple[Any, ...]:
    """Every row retention must keep: the thread, its runs (each one got), its messages."""
    runs = await engine.store.list_runs(user, thread_id)
    got = [await engine.store.get_run(user, r.run_id) for r in runs]
    return (
        await engine.store.get_thread(user, thread_id),
        runs,
        got,
        await engine.store.list_messages(user, thread_id),
    )


# --- the cut rule, without a log ------------------------------------------------------


def span(run_id: str, first: int | None, last: int | None, **kw: Any) -> RunSpan:
    return RunSpan(run_id, kw.get("parent"), kw.get("status", RunStatus.COMPLETED), first, last)


def test_boundaries_are_top_level_starts_no_run_straddles() -> None:
    spans = [
        span("a", 1, 4),
        span("b", 5, 10),
        span("b1", 6, 9, parent="b"),  # a sub-run's start is never a boundary
        span("c", 11, 14),
        span("d", 13, 16),  # d started before c ended: c's and d's starts...
        span("e", 17, 17),
    ]
    # ... c's start (11) is valid, d's start (13) is inside c: never a cut.
    assert boundaries(spans, 1, 17) == [5, 11, 17, 18]
    assert boundaries(spans, 5, 17) == [11, 17, 18]  # only cuts above the first retained
    assert boundaries([], 3, 9) == [10]  # no runs: the whole stream or nothing
    assert (plan_cut([5, 11, 18], 4), plan_cut([5, 11, 18], 11), plan_cut([5, 11], 99)) == (
        None,
        11,
        11,
    )


def test_policy_refuses_nonsense_and_reports_whether_it_is_bounded() -> None:
    assert not RetentionPolicy().bounded
    assert RetentionPolicy(max_events=1).bounded
    assert RetentionPolicy(max_age_s=1).bounded
    for bad in ({"max_events": 0}, {"max_age_s": 0}, {"events_per_delete": 0}):
        with pytest.raises(ValueError, match="must be"):
            RetentionPolicy(**bad)


# --- the size bound --------------------------------------------------------------------


async def test_size_bound_trims_whole_runs_with_their_sub_runs(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    thread = (await engine.store.create_thread("alice")).thread_id
    other = (await engine.store.create_thread("bob")).thread_id
    await whole_run(engine, "alice", thread, thinking=3)  # seqs 1-5
    await run_with_sub_run(engine, "alice", thread)  # seqs 6-11
    await whole_run(engine, "alice", thread)  # seqs 12-14
    for _ in range(3):
        await whole_run(engine, "bob", other)  # seqs 1-9, 9 > the bound too
    before, bob_before = await all_events(engine, thread), await all_events(engine, other)
    kept_rows = await rows(engine, "alice", thread)

    # The newest 8 start at seq 7, inside the run with the sub-run: that run and
    # its sub-run are kept whole, and the cut falls at its start (6).
    sweep = sweeper(engine, max_events=8)
    result = await sweep.sweep_once()
    # bob's thread: the newest 8 start at 2, inside bob's first run: nothing to cut.
    assert (result.threads, result.trimmed, result.failed, result.wrapped) == (2, 5, 0, True)
    assert await all_events(engine, thread) == before[5:]
    assert seqs(await all_events(engine, thread)) == list(range(6, 15))
    assert await all_events(engine, other) == bob_before
    info = await engine.log.info(thread)
    assert (info.first_seq, info.last_seq) == (6, 14)
    assert await rows(engine, "alice", thread) == kept_rows  # only events are deleted
    assert trimmed_total(engine) == 5
    assert sweeps(engine, "ok") == 1

    # The bound now holds up to whole runs: the next pass trims nothing.
    assert (await sweep.sweep_once()).trimmed == 0
    # A tighter bound cuts at the next top-level start (12), never at the sub-run.
    assert (await sweeper(engine, max_events=2).sweep_once()).trimmed == 6 + 6
    assert seqs(await all_events(engine, thread)) == [12, 13, 14]
    assert seqs(await all_events(engine, other)) == [7, 8, 9]


# --- the age bound -------------------------------------------------------------------


async def test_age_bound_trims_only_runs_entirely_older(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    thread = (await engine.store.create_thread("alice")).thread_id
    await whole_run(engine, "alice", thread)  # 1-3
    await run_with_sub_run(engine, "alice", thread)  # 4-9
    # A millisecond of clock on each side of ``middle``: far more than a float's rounding.
    middle = (await all_events(engine, thread))[-1].ts + 0.001
    await wait_until(lambda: time.time() > middle + 0.001, message="the clock to tick")
    await whole_run(engine, "alice", thread)  # 10-12: younger than ``middle``
    kept_rows = await rows(engine, "alice", thread)
    day = 86_400.0

    # A day after ``middle``, everything before it is older than a day.
    result = await sweeper(engine, clock=lambda: middle + day, max_age_s=day).sweep_once()
    assert result.trimmed == 9
    assert seqs(await all_events(engine, thread)) == [10, 11, 12]
    assert await rows(engine, "alice", thread) == kept_rows
    # Both bounds: either one expires an event; max_events=1 alone would cut
    # nowhere (12 is inside the last run), and the age bound keeps that run.
    both = sweeper(engine, clock=lambda: middle + day, max_age_s=day, max_events=1)
    assert (await both.sweep_once()).trimmed == 0
    # Once the last run is older too, the whole stream goes; the head stays.
    later = sweeper(engine, clock=lambda: time.time() + 2 * day, max_age_s=day)
    assert (await later.sweep_once()).trimmed == 3
    info = await engine.log.info(thread)
    assert (info.first_seq, info.last_seq, await all_events(engine, thread)) == (13, 12, [])
    assert trimmed_total(engine) == 12


# --- active runs, resume behind a trim ------------------------------------------------


async def test_an_active_run_keeps_every_event_across_a_sweep(make_engine: EngineFactory) -> None:
    gate = asyncio.Event()

    async def long_running(ctx: RunContext) -> str:
        await ctx.think("before the sweep")
        await ctx.delegate("echo", "a sub-run while the sweep runs")
        await gate.wait()
        await ctx.think("after the sweep")
        return "finished"

    registry = builtin_registry(demo_pace=0)
    registry.register(long_running, name="long", description="waits for a gate")
    engine = await make_engine(registry)
    first = await engine.runner.start_run("alice", "echo", "one")
    await wait_run(engine, "alice", first.run_id)
    thread = first.thread_id
    bob = await engine.runner.start_run("bob", "echo", "bob's")
    await wait_run(engine, "bob", bob.run_id)
    long = await engine.runner.start_run("alice", "long", "two", thread_id=thread)

    async def sub_run_done() -> bool:
        runs = await engine.store.list_runs("alice", thread)
        return len(runs) == 3 and runs[2].status is RunStatus.COMPLETED

    await wait_until(sub_run_done, message="the sub-run to end")
    long_start = (await engine.store.get_run("alice", long.run_id)).first_seq
    assert long_start is not None
    assert long_start > 1
    before = await all_events(engine, thread)
    everything_expired = sweeper(engine, clock=lambda: time.time() + 1e6, max_age_s=1, max_events=1)

    # Every event has expired, but the active run keeps its own from its agent_started.
    assert (await everything_expired.sweep_once()).trimmed == (long_start - 1) + 3  # bob's 3
    assert await all_events(engine, thread) == before[long_start - 1 :]
    assert (await engine.log.info(bob.thread_id)).first_seq == 4

    # A follower resuming from a trimmed position is told so, then gets every
    # retained event in order and the live ones; one at a retained position is
    # unaffected.
    behind = await engine.log.follow(thread, after_seq=1, epoch=first.epoch)
    assert (behind.start.recovered, behind.start.after_seq) == (False, long_start - 1)
    current = await engine.log.follow(thread, after_seq=before[-1].seq, epoch=first.epoch)
    assert current.start.recovered
    gate.set()
    await wait_run(engine, "alice", long.run_id)
    whole = await all_events(engine, thread)
    assert seqs(whole) == list(range(long_start, whole[-1].seq + 1))
    got: list[StoredEvent] = []
    while len(got) < len(whole):
        got.extend(await within(seconds(5), behind.next_batch(), "the retained events"))
    assert got == whole
    live: list[StoredEvent] = []
    while len(live) < len(whole) - len(before[long_start - 1 :]):
        live.extend(await within(seconds(5), current.next_batch(), "the live events"))
    assert live == whole[len(before) - long_start + 1 :]
    assert [e.type for e in live][-1] == "agent_completed"
    await behind.aclose()
    await current.aclose()

    # Ended, it goes too.
    assert (await everything_expired.sweep_once()).trimmed == len(whole)
    assert len(await engine.store.list_runs("alice", thread)) == 3


# --- bounded passes, outages, the engine's task ---------------------------------------


class Spy:
    """The log, with trims recorded and an outage switch."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.trims: list[tuple[str, int]] = []
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

    async def trim(self, thread_id: str, before_seq: int) -> int:
        if self.down:
            raise LogUnavailable("the log is down (test)")
        self.trims.append((thread_id, before_seq))
        return await self.log.trim(thread_id, before_seq)


async def test_passes_are_bounded_and_survive_an_outage(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    threads = sorted([(await engine.store.create_thread("alice")).thread_id for _ in range(3)])
    for thread in threads:
        for thinking in (1, 0, 0, 4, 0):  # runs of 3, 2, 2, 6, 2 events from 1, 4, 6, 8, 14
            await whole_run(engine, "alice", thread, thinking=thinking)
    spy = Spy(engine.log)
    sweep = RetentionSweeper(
        cast(EventLog, spy),
        engine.store,
        RetentionPolicy(max_events=2, threads_per_pass=2, events_per_delete=4),
        metrics=engine.metrics,
    )
    # Pass 1: the first two threads; deletes of at most 4 events, at run
    # boundaries, except the 6-event run, deleted whole.
    first = await sweep.sweep_once()
    assert (first.threads, first.trimmed, first.wrapped) == (2, 2 * 13, False)
    steps = [4, 8, 14]
    assert spy.trims == [(t, s) for t in threads[:2] for s in steps]
    # Pass 2: the log is down. Loud: it raises, counts an error, says why.
    spy.down = True
    with pytest.raises(LogUnavailable):
        await sweep.sweep_once()
    assert sweeps(engine, "error") == 1
    assert sweep.last_error is not None
    assert seqs(await all_events(engine, threads[2]))[0] == 1  # nothing lost or half-trimmed
    # Pass 3: back; it resumes with the thread it could not trim, and wraps.
    spy.down = False
    third = await sweep.sweep_once()
    assert (third.threads, third.trimmed, third.wrapped) == (1, 13, True)
    assert sweep.last_error is None
    assert sweeps(engine, "ok") == 2
    for thread in threads:
        assert seqs(await all_events(engine, thread)) == [14, 15]


async def test_the_engine_sweeps_in_the_background_and_stops_with_it(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(retention_max_events=1, retention_interval_s=seconds(0.02))
    assert engine.retention is not None
    first = await engine.runner.start_run("alice", "echo", "one")
    await wait_run(engine, "alice", first.run_id)
    second = await engine.runner.start_run("alice", "echo", "two", thread_id=first.thread_id)
    await wait_run(engine, "alice", second.run_id)
    start = (await engine.store.get_run("alice", second.run_id)).first_seq

    # The counter moves once the trim returned to the sweeper: wait on it, then look.
    await wait_until(lambda: trimmed_total(engine) == 3, message="the background sweep")
    assert (await engine.log.info(first.thread_id)).first_seq == start
    # The health canary's stream is the bridge's own (no thread row): untouched.
    assert HEALTH_THREAD not in await engine.store.thread_ids()
    assert (await engine.bridge.check_health()).ok
    task = engine.retention.start()  # idempotent: the running task
    await engine.shutdown(grace_s=0)
    assert task.done()
    assert not engine.retention.last_error


async def test_a_follower_whose_unread_events_are_trimmed_is_told(
    make_engine: EngineFactory,
) -> None:
    """A lagging live follower never skips a trimmed range silently: ``HistoryLost``."""
    engine = await make_engine()
    thread = (await engine.store.create_thread("alice")).thread_id
    await whole_run(engine, "alice", thread)  # 1-3
    lagging = await engine.log.follow(thread, after_seq=0)
    assert (lagging.start.recovered, lagging.start.after_seq) == (True, 0)
    await whole_run(engine, "alice", thread)  # 4-6
    assert (await sweeper(engine, max_events=3).sweep_once()).trimmed == 3
    with pytest.raises(HistoryLost):
        await within(seconds(5), lagging.next_batch(), "the follower's verdict")
    await lagging.aclose()
    again = await engine.log.follow(thread, after_seq=0, epoch=lagging.start.epoch)
    assert (again.start.recovered, again.start.after_seq) == (False, 3)
    assert seqs(await within(seconds(5), again.next_batch(), "the retained events")) == [4, 5, 6]
    await again.aclose()
