"""What only the PostgreSQL store has: several processes sharing one database.

Two :class:`PostgresDatabase` objects on one database stand for two server
processes (each has its own writer connection and pool). The conformance
suites (test_store.py and the others here) check everything else.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from agentcast.agents.history import INTERRUPTED_MARKER
from agentcast.db.postgres import PostgresDatabase
from agentcast.log.base import StoredEvent
from agentcast.store.base import NewRun, RunStatus
from agentcast.store.postgres import PostgresStore
from agentcast.types import new_event_id, new_run_id
from tests.utils import wait_until

StoreFactory = Callable[[], Awaitable[PostgresStore]]


@pytest_asyncio.fixture
async def make_store(pg_url: str) -> AsyncIterator[StoreFactory]:
    """Stores on the test's database, each on its own PostgresDatabase (as another process)."""
    databases: list[PostgresDatabase] = []

    async def factory() -> PostgresStore:
        db = PostgresDatabase(pg_url)
        await db.open()
        databases.append(db)
        return PostgresStore(db)

    yield factory
    for db in databases:
        await db.close()


def _db(store: PostgresStore) -> PostgresDatabase:
    return store._db  # the database under the store


async def test_two_processes_racing_one_idempotency_key_get_one_run(
    make_store: StoreFactory,
) -> None:
    first, second = await make_store(), await make_store()
    thread = (await first.create_thread("alice")).thread_id
    keys = [f"k{i}" for i in range(20)]

    async def start(store: PostgresStore, key: str) -> tuple[str, bool]:
        record, created = await store.create_run(
            NewRun(new_run_id(), thread, "alice", "echo", "hi", idempotency_key=key)
        )
        return record.run_id, created

    for key in keys:
        (a, a_created), (b, b_created) = await asyncio.gather(start(first, key), start(second, key))
        assert a == b
        assert sorted([a_created, b_created]) == [False, True]
    runs = await second.list_runs("alice", thread)
    assert sorted(r.idempotency_key or "" for r in runs) == sorted(keys)
    messages = await first.list_messages("alice", thread)
    assert sorted(m.run_id or "" for m in messages) == sorted(r.run_id for r in runs)


@pytest.mark.parametrize("other_commits", [True, False], ids=["commit", "rollback"])
async def test_create_run_waits_for_an_uncommitted_run_with_its_key(
    make_store: StoreFactory, pg_url: str, other_commits: bool
) -> None:
    """The insert waits for the other transaction: its run if it commits, a new one if not."""
    store = await make_store()
    thread = (await store.create_thread("alice")).thread_id
    other = await asyncpg.connect(pg_url)
    try:
        other_tx = other.transaction()
        await other_tx.start()
        theirs = new_run_id()
        await other.execute(
            "INSERT INTO runs (run_id, thread_id, user_id, agent, input, status, created_at, "
            "idempotency_key) VALUES ($1, $2, 'alice', 'echo', 'hi', 'queued', $3, 'k')",
            theirs,
            thread,
            time.time(),
        )
        mine = new_run_id()
        task = asyncio.create_task(
            store.create_run(NewRun(mine, thread, "alice", "echo", "hi", idempotency_key="k"))
        )
        writer = _db(store).writer_pid

        async def waiting_for_a_lock() -> bool:
            state = await other.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", writer
            )
            return bool(state == "Lock")

        await wait_until(waiting_for_a_lock, message="the insert to wait for the other one")
        assert not task.done()
        if other_commits:
            await other_tx.commit()
        else:
            await other_tx.rollback()
        record, created = await task
    finally:
        await other.close()
    assert (record.run_id, created) == ((theirs, False) if other_commits else (mine, True))
    assert record.status is RunStatus.QUEUED


async def test_queue_positions_increase_across_processes(make_store: StoreFactory) -> None:
    stores = [await make_store(), await make_store()]
    thread = (await stores[0].create_thread("alice")).thread_id
    made = []
    for store in itertools.islice(itertools.cycle(stores), 6):
        record, _ = await store.create_run(NewRun(new_run_id(), thread, "alice", "echo", "go"))
        made.append(record)
    positions = [r.queue_pos for r in made]
    assert positions == sorted(set(positions))
    assert [r.run_id for r in await stores[1].active_runs()] == [r.run_id for r in made]
    assert [r.run_id for r in await stores[0].list_runs("alice", thread)] == [
        r.run_id for r in made
    ]


def _event(thread_id: str, seq: int, run_id: str, kind: str, **data: Any) -> StoredEvent:
    raw = msgspec.json.encode({"type": kind, "run_id": run_id, "seq": seq, "data": data})
    return StoredEvent(thread_id, seq, new_event_id(), run_id, None, kind, time.time(), raw)


async def _append(store: PostgresStore, events: Sequence[StoredEvent]) -> None:
    """What PostgresLog's append does for the store: insert the rows, project them."""

    async def op(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO events (thread_id, seq, event_id, run_id, parent_run_id, type, ts, raw) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (e.thread_id, e.seq, e.event_id, e.run_id, e.parent_run_id, e.type, e.ts, e.raw)
                for e in events
            ],
        )
        await store.project(conn, events)

    await _db(store).write(op)


async def test_one_batch_projects_several_runs_and_their_turns(
    make_store: StoreFactory,
) -> None:
    """Runs started and ended within one batch, beside one that only moves on."""
    store = await make_store()
    thread = (await store.create_thread("alice")).thread_id
    ids = []
    for question in ("q1", "q2", "q3"):
        record, _ = await store.create_run(NewRun(new_run_id(), thread, "alice", "echo", question))
        ids.append(record.run_id)
    done, failed, going = ids
    seq = itertools.count(1)
    completed = {"status": "success", "final_response": "a1", "duration_ms": 1}
    error = {"error_type": "RuntimeError", "message": "boom", "duration_ms": 1}
    await _append(
        store,
        [
            _event(thread, next(seq), done, "agent_started", message="q1"),
            _event(thread, next(seq), going, "agent_started", message="q3"),
            _event(thread, next(seq), failed, "agent_started", message="q2"),
            _event(thread, next(seq), failed, "text_delta", message_id="m", delta="half"),
            _event(thread, next(seq), done, "text_delta", message_id="m", delta="ignored"),
            _event(thread, next(seq), going, "text_delta", message_id="m", delta="..."),
            _event(thread, next(seq), done, "agent_completed", **completed),
            _event(thread, next(seq), failed, "agent_error", **error),
        ],
    )
    records = {r.run_id: r for r in await store.list_runs("alice", thread)}
    assert [
        (records[r].status, records[r].first_seq, records[r].last_seq, records[r].output,
         records[r].error)
        for r in (done, failed, going)
    ] == [
        (RunStatus.COMPLETED, 1, 7, "a1", None),
        (RunStatus.FAILED, 3, 8, None, "RuntimeError: boom"),
        (RunStatus.RUNNING, 2, 6, None, None),
    ]  # fmt: skip
    assert records[done].started_at is not None
    assert records[done].ended_at is not None
    messages = await store.list_messages("alice", thread)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "q1"), ("user", "q2"), ("user", "q3"), ("assistant", "a1"),
    ]  # fmt: skip
    assert await store.history(thread, 10**9, 20, 8000) == [
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
        [
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": f"half\n\n{INTERRUPTED_MARKER}"},
        ],
    ]
    spans = await store.run_spans(thread, 7)
    assert [s.run_id for s in spans] == [done, failed, going]
