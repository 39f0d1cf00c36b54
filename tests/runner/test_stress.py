"""200+ runs at once across 50 users: every invariant, exactly (docs/architecture.md 2, 3, 4)."""

from __future__ import annotations

import asyncio
import random

import pytest

from agentcast.engine import Engine
from agentcast.events import TERMINAL_TYPES
from agentcast.runner import RunTicket
from agentcast.store.base import RunStatus
from tests.conftest import EngineFactory
from tests.invariants import assert_status_matches
from tests.runner.helpers import test_registry, thread_events, wait_run

pytestmark = pytest.mark.slow

USERS = 50
#: The kind of run a user starts in its second thread, by user index.
KINDS = ("echo", "demo", "failing", "hanger")
EXPECTED = {
    "echo": RunStatus.COMPLETED,
    "demo": RunStatus.COMPLETED,
    "countdown": RunStatus.COMPLETED,
    "failing": RunStatus.FAILED,
    "hanger": RunStatus.FAILED,  # times out
}


async def user_runs(engine: Engine, i: int) -> list[tuple[str, RunTicket, RunStatus]]:
    user = f"user{i:02d}"
    start = engine.runner.start_run
    runs: list[tuple[str, RunTicket, RunStatus]] = []
    first = await start(user, "countdown", "5 20")
    runs.append((user, first, RunStatus.COMPLETED))
    queued = await start(user, "echo", "next", thread_id=first.thread_id, on_active="enqueue")
    runs.append((user, queued, RunStatus.COMPLETED))
    kind = KINDS[i % len(KINDS)]
    runs.append((user, await start(user, kind, "where can we save money?"), EXPECTED[kind]))
    victim = await start(user, "countdown", "40 50")
    await asyncio.sleep(random.uniform(0, 0.3))
    if i % 2:
        await engine.runner.cancel(user, run_id=victim.run_id)
        runs.append((user, victim, RunStatus.CANCELLED))
    else:
        runs.append((user, victim, RunStatus.CANCELLED))
        interrupt = await start(user, "echo", "stop that", thread_id=victim.thread_id,
                                on_active="interrupt")  # fmt: skip
        runs.append((user, interrupt, RunStatus.COMPLETED))
    return runs


async def test_200_runs_across_50_users(make_engine: EngineFactory) -> None:
    engine = await make_engine(test_registry(), max_runs_per_user=2, run_timeout_s=3.0)
    per_user = await asyncio.gather(*(user_runs(engine, i) for i in range(USERS)))
    runs = [r for rs in per_user for r in rs]
    assert len(runs) >= 200
    for user, ticket, _ in runs:
        await wait_run(engine, user, ticket.run_id, within=60)
    await asyncio.wait_for(engine.runner.wait_idle(), 30)

    threads: dict[str, str] = {t.thread_id: user for user, t, _ in runs}
    all_runs = 0
    for thread_id, owner in threads.items():
        events = await thread_events(engine, thread_id)  # contiguous + lifecycles
        run_ids = {e.run_id for e in events}
        all_runs += len(run_ids)
        for run_id in run_ids:
            record = await engine.store.get_run(owner, run_id)  # NotFound if another user's
            assert record.user_id == owner
            assert record.thread_id == thread_id
            assert_status_matches(record, [e for e in events if e.run_id == run_id])
        assert sum(e.type in TERMINAL_TYPES for e in events) == len(run_ids)
    for user, ticket, expected in runs:
        record = await engine.store.get_run(user, ticket.run_id)
        assert record.status is expected, (ticket, record)
    assert all_runs > len(runs)  # the demo's sub-runs are in there too
    assert engine.runner.running_count == engine.runner.queued_count == 0
