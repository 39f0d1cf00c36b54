"""Every run's story stays whole, whatever happens to it and whenever: by property.

Threads in parallel, each a sequence of runs of agents that call tools (fast,
slow, sync, failing), stream text and delegate (sequentially, with ``gather``,
or leaving a sub-run behind). Each run is, at a random moment, left alone,
cancelled by id, cancelled by thread, has one of its sub-runs cancelled by the
sub-run's id, is interrupted by a new message, or times out; a last round is
cut by a shutdown. The moment a run's terminal event reaches a follower, the
next run on its thread is started with ``on_active=reject``: it must be
accepted at once. Then every thread is checked against the story rules
(:func:`tests.runner.story.check_story`).

The same runs again with faults injected into the log: appends that fail for
a while, appends that commit but answer too late (retried, stored once), and
one event of some runs refused for good.

Seeded: the seed is printed, and ``AGENTCAST_STORY_SEED`` replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.errors import LogUnavailable, NotFound
from agentcast.events import TERMINAL_TYPES
from agentcast.log.base import StoredEvent
from agentcast.runner import OnActive, Runner, RunTicket
from tests.invariants import decode_all
from tests.runner.story import FaultyLog, check_story, dump, story_registry
from tests.utils import MS, seconds, within

pytestmark = pytest.mark.slow

THREADS = 12
USERS = 4
RUNS_PER_THREAD = 40
ACTIONS = ("none", "none", "cancel", "cancel_thread", "cancel_sub", "interrupt", "timeout")


@dataclass
class Tally:
    runs: int = 0
    actions: dict[str, int] = field(default_factory=dict)

    def count(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1


def _seed() -> int:
    raw = os.environ.get("AGENTCAST_STORY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def _engine(tmp_path: Path, backend: str, **overrides: object) -> Engine:
    settings = EngineSettings(
        data_dir=tmp_path / "data",
        log_backend=backend,  # type: ignore[arg-type]
        health_interval_s=3600,
        recovery_base_s=0.005,
        recovery_max_s=0.02,
        recovery_attempts=1000,
        text_coalesce_ms=5,
        run_timeout_s=seconds(0.25),
        max_runs_per_user=3,
        shutdown_grace_s=0,
    ).with_(**overrides)
    return Engine(settings, story_registry())


async def _live_subruns(engine: Engine, thread_id: str, top: str) -> list[str]:
    """Sub-runs under ``top`` that have started and not yet ended."""
    stored = await engine.bridge.read(thread_id, 0, 1_000_000)
    started = [
        e.run_id for e in stored if e.parent_run_id is not None and e.type == "agent_started"
    ]
    ended = {e.run_id for e in stored if e.type in TERMINAL_TYPES}
    runs = {e.run_id: e.parent_run_id for e in stored}

    def under(run_id: str) -> bool:
        parent = runs.get(run_id)
        while parent is not None:
            if parent == top:
                return True
            parent = runs.get(parent)
        return False

    return [r for r in started if r not in ended and under(r)]


async def _diagnose(engine: Engine, thread_id: str) -> str:
    """What a stuck thread looks like: its story, its runs' tasks, the bridge's queue."""
    import io

    story = decode_all(await engine.bridge.read(thread_id, 0, 1_000_000))
    out = io.StringIO()
    bridge = engine.bridge
    print(f"bridge {bridge.state} faults={bridge.faults} buffered={bridge.buffered}", file=out)
    for state in list(engine.runner._states.values()):
        if state.record.thread_id == thread_id:
            print(
                f"run {state.run_id} {state.cancel_reason} ending={state.ending} "
                f"closing={state.closing} children={len(state.children)} "
                f"creating={len(state.creating)} started={state.started} task={state.task!r}",
                file=out,
            )
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        chain = []
        while coro is not None and hasattr(coro, "cr_frame"):
            frame = coro.cr_frame
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = coro.cr_await
        chain.append(repr(coro)[:120])
        print(f"task {task.get_name()}: {' > '.join(chain)}", file=out)
    return f"{out.getvalue()}\n{dump(story)}"


async def _drive(
    engine: Engine, rng: random.Random, user: str, runs: int, tally: Tally
) -> tuple[str, list[str]]:
    """One thread: runs back to back, each met by a random action; returns its id."""
    runner = engine.runner
    ticket = await _start(runner, rng, user, None, tally)
    thread_id = ticket.thread_id
    follower = await engine.bridge.follow(thread_id, 0)
    latest = ticket.run_id
    tally.runs += 1
    refusals: list[str] = []
    try:
        for index in range(runs):
            action = rng.choice(ACTIONS)
            tally.count(action)
            await asyncio.sleep(rng.uniform(0, 150) * MS)
            if action == "cancel":
                await runner.cancel(user, run_id=latest)
            elif action == "cancel_thread":
                with contextlib.suppress(NotFound):  # it had ended: nothing to cancel
                    await runner.cancel(user, thread_id=thread_id)
            elif action == "cancel_sub":
                subs = await _live_subruns(engine, thread_id, latest)
                if subs:
                    await runner.cancel(user, run_id=rng.choice(subs))
            elif action == "interrupt":
                interrupting = await _start(runner, rng, user, thread_id, tally, "interrupt")
                latest = interrupting.run_id
                tally.runs += 1
            # Wait for the latest run's terminal event, then start the next at once.
            ended: StoredEvent | None = None
            while ended is None:
                try:
                    batch = await within(seconds(20), follower.next_batch(), f"run {latest} to end")
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc} after {action}\n{await _diagnose(engine, thread_id)}"
                    ) from None
                ended = next(
                    (e for e in batch if e.run_id == latest and e.type in TERMINAL_TYPES), None
                )
            if index == runs - 1:
                break
            try:
                nxt = await _start(runner, rng, user, thread_id, tally)
            except Exception as exc:  # collected: the assertion names every refusal
                refusals.append(f"{thread_id} after {latest}: {exc!r}")
                break
            latest = nxt.run_id
            tally.runs += 1
    finally:
        await follower.aclose()
    return thread_id, refusals


async def _start(
    runner: Runner,
    rng: random.Random,
    user: str,
    thread_id: str | None,
    tally: Tally,
    on_active: OnActive = "reject",
) -> RunTicket:
    """A start on the thread: refused only while the log is down.

    A start writes the run's row; while a dead database writer is being
    replaced that write fails with ``LogUnavailable`` (an outage the client
    is told about, and retries). ``RunActive`` or ``LimitExceeded`` would be
    the bug this test is about, and are never retried.
    """
    message = f"{rng.randrange(2**32)}"
    agent = rng.choice(["boss", "worker"])
    for _ in range(50):
        try:
            return await runner.start_run(user, agent, message, thread_id, on_active)
        except LogUnavailable:
            tally.count("start_retried_outage")
            await asyncio.sleep(5 * MS)
    return await runner.start_run(user, agent, message, thread_id, on_active)


async def _round(
    engine: Engine, rng: random.Random, runs: int, tally: Tally
) -> tuple[list[tuple[str, str]], list[str]]:
    users = [f"user{i}" for i in range(USERS)]
    plans = [(users[i % USERS], random.Random(rng.randrange(2**32))) for i in range(THREADS)]
    results = await asyncio.gather(*(_drive(engine, r, u, runs, tally) for u, r in plans))
    threads = [(user, thread) for (user, _), (thread, _) in zip(plans, results, strict=True)]
    refusals = [text for _, texts in results for text in texts]
    return threads, refusals


async def _shutdown_round(
    engine: Engine, rng: random.Random, tally: Tally
) -> list[tuple[str, str]]:
    """Runs cut by a shutdown at a random moment: each still ends with its terminal event."""
    threads = []
    for i in range(THREADS):
        user = f"user{i % USERS}"
        ticket = await _start(engine.runner, rng, user, None, tally)
        threads.append((user, ticket.thread_id))
        tally.runs += 1
    await asyncio.sleep(rng.uniform(0, 100) * MS)
    await within(seconds(30), engine.shutdown(grace_s=0), "shutdown")
    return threads


async def _play(engine: Engine, seed: int, label: str) -> tuple[Tally, list[tuple[str, str]]]:
    """Every round on a started engine; returns the tally and the threads cut by shutdown."""
    rng = random.Random(seed)
    tally = Tally()
    started = time.perf_counter()
    print(f"\n[{label}] starting")
    await engine.start()
    try:
        threads, refusals = await _round(engine, rng, RUNS_PER_THREAD, tally)
        assert refusals == [], f"seed {seed}: follow-up starts refused: {refusals}"
        await within(seconds(20), engine.runner.wait_idle(), "the runner to go idle")
        for user, thread in threads:
            await check_story(engine, user, thread)
        cut = await _shutdown_round(engine, rng, tally)
    finally:
        await engine.shutdown(grace_s=0)
    elapsed = time.perf_counter() - started
    print(
        f"\n[{label}] runs={tally.runs} in {elapsed:.1f}s ({tally.runs / elapsed:.0f} runs/s) "
        f"actions={tally.actions} broken stories=0"
    )
    return tally, cut


async def _check_after_shutdown(
    engine: Engine, tmp_path: Path, backend: str, cut: list[tuple[str, str]]
) -> None:
    """The runs cut by shutdown, read back without starting a runner (no recovery)."""
    if backend == "memory":
        await engine.log.open()
        for user, thread in cut:
            await check_story(engine, user, thread)
        return
    reader = _engine(tmp_path, backend)
    assert reader.db is not None
    await reader.db.open()
    await reader.store.open()
    await reader.log.open()
    try:
        for user, thread in cut:
            await check_story(reader, user, thread)
    finally:
        await reader.log.close()
        await reader.store.close()
        await reader.db.close()


def _kill_the_writer_now_and_then(
    engine: Engine, rng: random.Random, injected: dict[str, int], limit: int = 6
) -> None:
    """The SQLite writer thread dies before some groups (a bug escaping its loop).

    Every write of such a group fails at once and a new writer is started;
    the bridge retries its appends, a start whose row could not be written
    is refused with ``LogUnavailable``.
    """
    db = engine.db
    assert db is not None
    real = db._run_group

    def maybe_die(conn: Any, group: Any) -> Any:  # on the writer thread
        if injected["writer_deaths"] < limit and rng.random() < 0.004:
            injected["writer_deaths"] += 1
            raise RuntimeError("the writer thread died (injected)")
        return real(conn, group)

    db._run_group = maybe_die  # type: ignore[method-assign]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_every_story_is_whole_under_random_cancels_timeouts_and_shutdown(
    tmp_path: Path, backend: str
) -> None:
    seed = _seed()
    engine = _engine(tmp_path, backend)
    tally, cut = await _play(engine, seed, f"{backend} seed={seed}")
    assert tally.runs >= 500
    await _check_after_shutdown(engine, tmp_path, backend, cut)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_every_story_is_whole_with_log_faults(tmp_path: Path, backend: str) -> None:
    seed = _seed()
    engine = _engine(tmp_path, backend, append_timeout_s=seconds(0.05))
    faulty = FaultyLog(
        engine.bridge.log, random.Random(seed ^ 0x5EED),
        transient=0.03, stall=0.01, stall_s=seconds(0.08), reject=0.01,
    )  # fmt: skip
    engine.bridge.log = faulty  # type: ignore[assignment]
    if engine.db is not None:
        _kill_the_writer_now_and_then(engine, random.Random(seed ^ 0xDEAD), faulty.injected)
    tally, cut = await _play(engine, seed, f"{backend} faults seed={seed}")
    print(f"[{backend} faults] injected={dict(faulty.injected)}")
    if engine.db is not None:
        assert faulty.injected["writer_deaths"] > 0
        assert engine.db.stats.writer_restarts >= faulty.injected["writer_deaths"] - 1
    assert faulty.injected["transient"] > 0
    assert faulty.injected["rejected"] > 0
    assert tally.runs >= 500
    await _check_after_shutdown(engine, tmp_path, backend, cut)
