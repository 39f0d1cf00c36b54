"""What only the PostgreSQL log has: several processes on one database.

Each "process" is a :class:`PostgresDatabase` plus a :class:`PostgresLog` on
the same database, in one test: their seqs never collide, a follower on one
sees the other's events live (``NOTIFY``), and still every one of them when
notifications are lost. The conformance suite (test_contract.py) covers the
single-process semantics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import msgspec
import pytest

from agentcast.db.postgres import PostgresDatabase, WriteOutcomeUnknown
from agentcast.errors import AppendRejected, LogUnavailable
from agentcast.log import EventDraft, StoredEvent
from agentcast.log.pg_listener import ALL_THREADS, MAX_PAYLOAD_BYTES, payload_for
from agentcast.log.postgres import PostgresLog
from tests.log.test_contract import draft, take
from tests.utils import seconds, wait_until

Factory = Callable[..., Awaitable[PostgresLog]]


@pytest.fixture
async def make_log(pg_url: str) -> AsyncIterator[Factory]:
    """Open "processes" on the test's database: each its own database object and log."""
    made: list[PostgresLog] = []

    async def factory(head_check_interval_s: float = 60.0) -> PostgresLog:
        log = PostgresLog(
            PostgresDatabase(pg_url, pool_max_size=3), head_check_interval_s=head_check_interval_s
        )
        await log.open()
        made.append(log)
        listener = log.listener
        assert listener is not None
        await wait_until(lambda: listener.connected, seconds(5), message="LISTEN")
        return log

    yield factory
    for log in made:
        await log.close()
        await log.db.close()


async def kill_backend(url: str, pid: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


def assert_contiguous(events: list[StoredEvent], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events)))
    assert len({e.event_id for e in events}) == len(events)


async def test_two_processes_appending_to_one_thread_get_contiguous_unique_seqs(
    make_log: Factory,
) -> None:
    a, b = await make_log(), await make_log()

    async def appender(log: PostgresLog, n: int) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        for _ in range(n):
            out.extend(await log.append([draft("th_x"), draft("th_x")]))
        return out

    results = await asyncio.gather(*(appender(log, 25) for log in (a, b, a, b)))
    stored = sorted((e for r in results for e in r), key=lambda e: e.seq)
    assert_contiguous(stored)
    assert len(stored) == 200
    assert await a.read("th_x", 0, 1000) == stored
    for log in (a, b):  # each batch of two got adjacent seqs
        for batch_start in range(0, 50, 2):
            pair = results[0 if log is a else 1][batch_start : batch_start + 2]
            assert pair[1].seq == pair[0].seq + 1
    assert (await b.info("th_x")).last_seq == 200


async def test_a_follower_sees_another_processes_events_live_in_order(
    make_log: Factory,
) -> None:
    a, b = await make_log(), await make_log()  # no head check within the test: NOTIFY only
    await a.append([draft("th_1")])
    follower = await b.follow("th_1", after_seq=0)
    assert_contiguous(await take(follower, 1, seconds(5)))
    for _ in range(20):
        await a.append([draft("th_1"), draft("th_2"), draft("th_1")])
    got = await take(follower, 40, seconds(5))
    assert_contiguous(got, first=2)
    assert got == await a.read("th_1", 1, 100)
    # Its own appends and the other's interleave without a gap or a duplicate.
    await b.append([draft("th_1")])
    await a.append([draft("th_1")])
    assert_contiguous(await take(follower, 2, seconds(5)), first=42)


async def test_a_follower_gets_every_event_while_the_listener_is_killed(
    make_log: Factory, pg_url: str
) -> None:
    a = await make_log()
    b = await make_log(head_check_interval_s=0.05)
    follower = await b.follow("th_1")
    listener = b.listener
    assert listener is not None
    pid = listener.server_pid
    assert pid is not None
    expected: list[StoredEvent] = []
    got: list[StoredEvent] = []
    for round_ in range(3):
        await kill_backend(pg_url, pid)
        for _ in range(10):  # committed while nobody (or a new connection) listens
            expected.extend(await a.append([draft("th_1")]))
        got.extend(await take(follower, 10, seconds(10)))
        await wait_until(lambda: listener.connected, seconds(10), message="the listener back")
        pid = listener.server_pid
        assert pid is not None, round_
    assert got == expected
    assert_contiguous(got)
    assert listener.connects >= 2


async def test_a_lost_notification_is_made_up_by_the_head_check(make_log: Factory) -> None:
    a = await make_log()
    b = await make_log(head_check_interval_s=0.05)
    follower = await b.follow("th_1")
    listener = b.listener
    assert listener is not None
    listener._on_notify = lambda payload: None  # type: ignore[method-assign]  # every one lost
    stored = await a.append([draft("th_1"), draft("th_1")])
    assert await take(follower, 2, seconds(5)) == stored


async def test_a_group_over_the_payload_bound_notifies_check_all(make_log: Factory) -> None:
    heads = {f"th_{'x' * 60}_{i}": i for i in range(200)}
    assert payload_for(heads) == ALL_THREADS
    small = payload_for({"th_1": 3})
    assert json.loads(small) == [["th_1", 3]]
    assert len(small) < MAX_PAYLOAD_BYTES

    a, b = await make_log(), await make_log()  # NOTIFY only: the "*" must do it
    follower = await b.follow("th_0")
    stored = await a.append([draft(thread) for thread in heads] + [draft("th_0")])
    assert await take(follower, 1, seconds(5)) == stored[-1:]


async def test_the_same_event_id_from_two_processes_is_stored_once(make_log: Factory) -> None:
    a, b = await make_log(), await make_log()
    for _ in range(10):
        event = draft("th_1")
        fresh = msgspec.structs.replace(event, fresh=True)  # no look-up: the index decides
        first, second = await asyncio.gather(a.append([fresh]), b.append([fresh]))
        assert first == second
    events = await a.read("th_1")
    assert_contiguous(events)
    assert len(events) == 10


async def test_a_commit_of_unknown_outcome_is_retried_and_stored_once(make_log: Factory) -> None:
    a = await make_log()
    b = await make_log()
    follower = await b.follow("th_1")
    db = a.db
    real_commit = db._commit

    async def commit_then_drop(conn: asyncpg.Connection) -> None:
        await real_commit(conn)
        conn.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    db._commit = commit_then_drop  # type: ignore[method-assign]
    drafts = [draft("th_1"), draft("th_1")]
    with pytest.raises(WriteOutcomeUnknown):
        await a.append(drafts)
    del db._commit

    async def retried() -> list[StoredEvent]:
        while True:  # what the bridge does: retry LogUnavailable with the same drafts
            try:
                return await a.append(drafts)
            except LogUnavailable:
                await asyncio.sleep(0.01)

    stored = await asyncio.wait_for(retried(), seconds(5))
    assert [e.seq for e in stored] == [1, 2]
    assert await a.read("th_1") == stored
    assert (await a.info("th_1")).last_seq == 2
    assert await take(follower, 2, seconds(5)) == stored
    more = await a.append([draft("th_1")])
    assert more[0].seq == 3


async def test_figures_name_the_durability_and_the_queue_usage(make_log: Factory) -> None:
    log = await make_log()
    assert log.name == "postgres"
    assert log.durability == "synchronous_commit=on"
    usage = await log.notification_queue_usage()
    assert isinstance(usage, float)
    assert 0.0 <= usage < 0.5


async def held_writer(log: PostgresLog) -> tuple[asyncio.Event, asyncio.Future[str]]:
    """Hold the writer inside a group, so that what is submitted next queues as one group."""
    gate = asyncio.Event()
    inside = asyncio.Event()

    async def held(conn: asyncpg.Connection) -> str:
        inside.set()
        await gate.wait()
        return "held"

    first = log.db.submit(held)
    await asyncio.wait_for(inside.wait(), seconds(5))
    return gate, first


async def test_concurrent_appends_merge_into_one_group_of_three_statements(
    make_log: Factory,
) -> None:
    log = await make_log()
    threads = [f"th_{i}" for i in range(100)]
    await log.append([draft(t) for t in threads])  # the streams exist: the steady state
    conn = log.db._conn
    assert conn is not None
    statements: list[str] = []
    conn.add_query_logger(lambda query: statements.append(query.query))
    stats = log.db.stats
    groups, batches = stats.groups_committed, stats.batches_run
    gate, first = await held_writer(log)
    drafts = [draft(t) for t in threads]  # not fresh: their ids are looked up too
    appends = [asyncio.ensure_future(log.append([d])) for d in drafts]
    await asyncio.sleep(0.05)  # every append is queued behind the held group
    statements.clear()
    gate.set()
    await first
    results = await asyncio.gather(*appends)
    await asyncio.sleep(0)  # the query logger runs soon after each statement
    assert [r[0].event_id for r in results] == [d.event_id for d in drafts]  # each its own
    assert all(r[0].seq == 2 for r in results)
    assert stats.groups_committed - groups == 2  # the held op's group, then the appends'
    assert stats.batches_run - batches == 1
    body = [q for q in statements if q not in ("BEGIN", "COMMIT")]
    # Lock and look up, insert and move the heads, pg_notify: 100 appends, 3 statements.
    assert len(body) == 3, statements
    assert "pg_notify" in body[-1]


async def test_a_bad_append_among_merged_ones_fails_alone(pg_url: str) -> None:
    async def projector(conn: asyncpg.Connection, events: list[StoredEvent]) -> None:
        if any(e.run_id == "bad" for e in events):
            raise ValueError("the projector refuses this run")

    log = PostgresLog(PostgresDatabase(pg_url, pool_max_size=2), projector=projector)
    await log.open()
    try:
        gate, first = await held_writer(log)
        batches = [[draft("th_1"), draft("th_2")] for _ in range(5)]
        batches[2] = [draft("th_1"), draft("th_2", run_id="bad")]
        appends = [asyncio.ensure_future(log.append(b)) for b in batches]
        await asyncio.sleep(0.05)
        gate.set()
        await first
        results = await asyncio.gather(*appends, return_exceptions=True)
        assert isinstance(results[2], AppendRejected), results[2]
        good = [r for i, r in enumerate(results) if i != 2]
        assert all(isinstance(r, list) for r in good), good
        assert log.db.stats.batches_split == 1
        for thread in ("th_1", "th_2"):
            events = await log.read(thread)
            assert_contiguous(events)  # the culprit left no hole
            assert len(events) == 4
        # Each call got its own events, a thread's seqs in call order.
        ours = [e for r in good for e in r if e.thread_id == "th_1"]  # type: ignore[union-attr]
        assert [e.seq for e in ours] == [1, 2, 3, 4]
    finally:
        await log.close()
        await log.db.close()


@pytest.mark.parametrize("fresh", [False, True])
async def test_duplicates_inside_one_merged_group_are_stored_once(
    make_log: Factory, fresh: bool
) -> None:
    log = await make_log()
    await log.append([draft("th_1")])
    event = msgspec.structs.replace(draft("th_1"), fresh=fresh)
    other = draft("th_1")
    gate, first = await held_writer(log)
    calls: list[list[EventDraft]] = [[event], [other, event], [event]]
    appends = [asyncio.ensure_future(log.append(c)) for c in calls]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    a, b, c = await asyncio.gather(*appends)
    assert a[0] == b[1] == c[0]
    assert a[0].seq == 2
    assert b[0].seq == 3
    assert log.db.stats.batches_split == 0  # found in the merged call, no unique violation
    events = await log.read("th_1")
    assert_contiguous(events)
    assert [e.event_id for e in events[1:]] == [event.event_id, other.event_id]


async def _events_rows_scanned(url: str) -> int:
    """Rows of ``events`` read by sequential scans so far (every backend's, flushed)."""
    conn = await asyncpg.connect(url)
    try:
        value = await conn.fetchval(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'events'"
        )
    finally:
        await conn.close()
    return int(value or 0)


async def test_id_look_ups_stay_on_the_index_as_the_table_grows(pg_url: str) -> None:
    """No plan chosen while ``events`` was small may scan it on every later commit.

    asyncpg prepares each statement and PostgreSQL may keep a generic plan
    made while the table was small (a sequential scan) until its statistics
    change — never, where autovacuum is off, as on this server. Without
    ``plan_cache_mode=force_custom_plan`` each of the last 30 groups below
    read all 20,000 rows.
    """
    bulk = 20_000
    before = await _events_rows_scanned(pg_url)
    db = PostgresDatabase(pg_url, pool_max_size=2)
    log = PostgresLog(db)
    await log.open()
    try:
        for _ in range(20):  # while the table is small: ids the caller chose are looked up
            await asyncio.gather(*(log.append([draft(f"th_{j}")]) for j in range(10)))
        other = await asyncpg.connect(pg_url)
        try:  # the table grows behind the writer's back (another process, say)
            await other.execute(
                "INSERT INTO events (thread_id, seq, event_id, run_id, type, ts, raw) "
                "SELECT 'th_bulk', n, 'ev_bulk_' || n, 'run_bulk', 'custom', 0, '\\x7b7d' "
                "FROM generate_series(1, $1::int) AS n",
                bulk,
            )
        finally:
            await other.close()
        for _ in range(30):
            await asyncio.gather(*(log.append([draft(f"th_{j}")]) for j in range(10)))
    finally:
        await log.close()
        await db.close()  # its backends exit, which flushes their statistics
    assert await _events_rows_scanned(pg_url) - before < bulk
