"""PostgresDatabase: group commit, one bad op failing alone, retries, outages, schema checks.

Writes go to the ``meta`` table (key, value): small, and part of every schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest

from agentcast.db.pg_migrate import SchemaOutdated, apply_migrations, latest_version
from agentcast.db.postgres import (
    MAX_GROUP_RETRIES,
    PostgresDatabase,
    WriteOutcomeUnknown,
    classify,
)
from agentcast.errors import LogUnavailable
from tests.pg_support import create_database, drop_database
from tests.utils import seconds, wait_until


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase(pg_url, pool_max_size=2)
    await database.open()
    yield database
    await database.close()


def put(key: str, value: str = "v") -> Any:
    """An op storing ``key``; returns the key."""

    async def op(conn: asyncpg.Connection) -> str:
        await conn.execute("INSERT INTO meta (key, value) VALUES ($1, $2)", key, value)
        return key

    return op


async def keys(db: PostgresDatabase) -> set[str]:
    async def op(conn: asyncpg.Connection) -> set[str]:
        sql = "SELECT key FROM meta WHERE key NOT IN ('db_id', 'cluster_identity')"
        return {r["key"] for r in await conn.fetch(sql)}

    return await db.read(op)


async def terminate(url: str, pid: int) -> None:
    """Kill the server process ``pid`` from another connection and wait until it is gone."""
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
            return bool(count == 0)

        await wait_until(gone, seconds(5), message=f"backend {pid} to exit")
    finally:
        await conn.close()


async def test_writes_commit_and_are_read_back(db: PostgresDatabase) -> None:
    assert db.is_open
    assert db.schema_version == latest_version()
    assert db.synchronous_commit == "on"
    assert await db.write(put("a")) == "a"
    assert await keys(db) == {"a"}


async def test_concurrent_writes_share_group_commits(db: PostgresDatabase) -> None:
    await db.write(put("warm"))
    before = db.stats.groups_committed
    results = await asyncio.gather(*(db.write(put(f"k{i}")) for i in range(200)))
    assert results == [f"k{i}" for i in range(200)]
    groups = db.stats.groups_committed - before
    assert groups < 200 / 4, groups  # one transaction for many ops
    assert len(await keys(db)) == 201


async def test_a_bad_op_fails_alone_and_the_rest_of_its_group_commits(
    db: PostgresDatabase,
) -> None:
    await db.write(put("dup"))

    async def boom(conn: asyncpg.Connection) -> None:
        raise ValueError("not this one")

    futures = [
        db.submit(put("a")),
        db.submit(put("dup")),  # a unique violation
        db.submit(put("b")),
        db.submit(boom),  # a Python exception
        db.submit(put("c")),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [results[0], results[2], results[4]] == ["a", "b", "c"]
    assert isinstance(results[1], asyncpg.UniqueViolationError)
    assert isinstance(results[3], ValueError)
    assert await keys(db) == {"dup", "a", "b", "c"}
    assert db.stats.ops_failed == 2


async def test_a_serialization_failure_reruns_the_group(db: PostgresDatabase) -> None:
    runs = 0

    async def flaky(conn: asyncpg.Connection) -> str:
        nonlocal runs
        runs += 1
        await conn.execute("INSERT INTO meta (key, value) VALUES ('flaky', $1)", str(runs))
        if runs == 1:
            raise asyncpg.SerializationError("could not serialize access")
        return "flaky"

    other = db.submit(put("other"))
    assert await db.write(flaky) == "flaky"
    assert await other == "other"
    assert runs == 2
    assert db.stats.groups_retried >= 1
    assert await keys(db) == {"flaky", "other"}


async def test_retries_are_bounded(db: PostgresDatabase) -> None:
    async def deadlocked(conn: asyncpg.Connection) -> None:
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    with pytest.raises(LogUnavailable, match="attempts"):
        await db.write(deadlocked)
    assert db.stats.groups_retried == MAX_GROUP_RETRIES + 1
    assert await db.write(put("after")) == "after"


async def test_an_outage_fails_the_queued_writes_and_later_ones_succeed(
    db: PostgresDatabase, pg_url: str
) -> None:
    await db.write(put("before"))
    pid = db.writer_pid
    assert pid is not None
    gate = asyncio.Event()
    inside = asyncio.Event()

    async def held(conn: asyncpg.Connection) -> str:
        inside.set()
        await gate.wait()
        return cast(str, await put("held")(conn))

    group = [db.submit(held)] + [db.submit(put(f"q{i}")) for i in range(5)]
    await asyncio.wait_for(inside.wait(), seconds(5))
    later = [db.submit(put(f"later{i}")) for i in range(3)]  # the next group
    await terminate(pg_url, pid)  # the writer's backend dies mid-transaction
    gate.set()
    results = await asyncio.gather(*group, return_exceptions=True)
    assert all(isinstance(r, LogUnavailable) for r in results), results
    assert not any(isinstance(r, WriteOutcomeUnknown) for r in results)
    assert db.stats.outages == 1
    assert await asyncio.gather(*later) == ["later0", "later1", "later2"]
    assert db.writer_pid not in (None, pid)
    assert db.stats.reconnects == 1
    assert await keys(db) == {"before", "later0", "later1", "later2"}


async def test_a_connection_lost_while_idle_is_replaced_before_the_next_group(
    db: PostgresDatabase, pg_url: str
) -> None:
    pid = db.writer_pid
    assert pid is not None
    await terminate(pg_url, pid)
    await wait_until(lambda: not db.writer_connected, seconds(5), message="the socket to close")
    assert await db.write(put("after")) == "after"  # nothing was in flight: nothing lost
    assert db.writer_pid not in (None, pid)


async def test_an_unreachable_server_fails_writes_fast_then_recovers(
    db: PostgresDatabase, pg_url: str
) -> None:
    real = db._connect_writer
    down = True

    async def connect() -> asyncpg.Connection:
        if down:
            raise OSError("connection refused")
        return await real()

    db._connect_writer = connect  # type: ignore[method-assign]
    pid = db.writer_pid
    assert pid is not None
    await terminate(pg_url, pid)
    for _ in range(3):  # the lost connection, then the refused reconnects
        with pytest.raises(LogUnavailable):
            await db.write(put("lost"))
    down = False

    async def accepted() -> bool:
        try:
            await db.write(put("back"))
        except LogUnavailable:
            return False
        return True

    await wait_until(accepted, seconds(5), message="the writer to reconnect")
    assert await keys(db) == {"back"}


async def test_a_connection_lost_after_commit_was_sent_is_an_unknown_outcome(
    db: PostgresDatabase,
) -> None:
    async def commit_then_drop(conn: asyncpg.Connection) -> None:
        await conn.execute("COMMIT")
        conn.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    db._commit = commit_then_drop  # type: ignore[method-assign]
    with pytest.raises(WriteOutcomeUnknown):
        await db.write(put("maybe"))
    del db._commit  # the real one again
    assert await keys(db) == {"maybe"}  # it did commit: a retry must find it
    assert await db.write(put("next")) == "next"


async def test_on_commit_runs_before_the_caller_resumes_even_if_cancelled(
    db: PostgresDatabase,
) -> None:
    seen: list[str] = []
    first = db.submit(put("a"), on_commit=seen.append)
    first.cancel()  # the caller gave up; the write still commits and its callback runs
    second = await db.write(put("b"), on_commit=seen.append)
    assert second == "b"
    assert seen == ["a", "b"]
    await db.settled()


async def test_a_failed_op_gets_no_on_commit(db: PostgresDatabase) -> None:
    seen: list[Any] = []

    async def boom(conn: asyncpg.Connection) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await db.write(boom, on_commit=seen.append)
    assert seen == []


async def test_before_commit_hooks_run_once_per_group_with_the_results(
    db: PostgresDatabase,
) -> None:
    calls: list[list[Any]] = []

    async def hook(conn: asyncpg.Connection, results: list[Any]) -> None:
        assert conn.is_in_transaction()
        calls.append(list(results))

    db.before_commit(hook)

    async def boom(conn: asyncpg.Connection) -> None:
        raise ValueError("no")

    futures = [db.submit(put("a")), db.submit(boom), db.submit(put("b"))]
    await asyncio.gather(*futures, return_exceptions=True)
    assert calls == [["a", "b"]]  # the failed op is not there; the rerun group ran it once


async def test_a_failing_hook_fails_the_group(db: PostgresDatabase) -> None:
    async def hook(conn: asyncpg.Connection, results: list[Any]) -> None:
        if "bad" in results:
            raise RuntimeError("hook failed")

    db.before_commit(hook)
    with pytest.raises(LogUnavailable):
        await db.write(put("bad"))
    assert await db.write(put("good")) == "good"
    assert await keys(db) == {"good"}


async def test_settled_waits_for_the_callbacks_of_begun_commits(db: PostgresDatabase) -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def held(conn: asyncpg.Connection) -> str:
        await conn.execute("INSERT INTO meta (key, value) VALUES ('held', 'v')")
        return "held"

    real_commit = db._commit

    async def slow_commit(conn: asyncpg.Connection) -> None:
        await gate.wait()
        await real_commit(conn)

    db._commit = slow_commit  # type: ignore[method-assign]
    written = db.submit(held, on_commit=seen.append)
    await wait_until(lambda: db._commits.begun == 1, seconds(5), message="COMMIT to begin")
    settling = asyncio.ensure_future(db.settled())
    await asyncio.sleep(0)
    assert not settling.done()
    gate.set()
    await asyncio.wait_for(settling, seconds(5))
    assert seen == ["held"]
    assert await written == "held"


async def test_reads_of_a_closed_database_are_unavailable(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    with pytest.raises(LogUnavailable):
        await db.read(lambda conn: conn.fetchval("SELECT 1"))
    with pytest.raises(LogUnavailable):
        db.submit(put("x"))
    await db.open()
    assert await db.read(lambda conn: conn.fetchval("SELECT 1")) == 1
    await db.close()
    assert not db.is_open
    with pytest.raises(LogUnavailable):
        await db.write(put("x"))


async def test_close_commits_what_is_queued(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    await db.open()
    futures = [db.submit(put(f"k{i}")) for i in range(10)]
    await db.close()
    assert [f.result() for f in futures] == [f"k{i}" for i in range(10)]
    await db.open()
    try:
        assert len(await keys(db)) == 10
    finally:
        await db.close()


async def test_an_unmigrated_database_is_refused_with_the_upgrade_command() -> None:
    url = await create_database(migrate=False)
    try:
        db = PostgresDatabase(url)
        with pytest.raises(SchemaOutdated, match="agentcast db upgrade"):
            await db.open()
        assert not db.is_open
        conn = await asyncpg.connect(url)
        try:
            assert await apply_migrations(conn) == list(range(1, latest_version() + 1))
            assert await apply_migrations(conn) == []  # idempotent
        finally:
            await conn.close()
        await db.open()
        await db.close()
    finally:
        await drop_database(url)


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO agentcast_schema (version) VALUES ($1)", 999)
    finally:
        await conn.close()
    try:
        with pytest.raises(SchemaOutdated, match="newer"):
            await PostgresDatabase(pg_url).open()
    finally:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DELETE FROM agentcast_schema WHERE version = $1", 999)
        finally:
            await conn.close()


async def test_an_unreachable_server_is_unavailable_and_the_url_is_masked() -> None:
    db = PostgresDatabase("postgresql://u:secret@127.0.0.1:1/x", connect_timeout_s=seconds(2))
    assert "secret" not in repr(db)
    with pytest.raises(LogUnavailable) as info:
        await db.open()
    assert "secret" not in str(info.value)


def test_classify_by_sqlstate() -> None:
    assert classify(asyncpg.SerializationError("x")) == "retry"
    assert classify(asyncpg.DeadlockDetectedError("x")) == "retry"
    assert classify(asyncpg.AdminShutdownError("x")) == "outage"
    assert classify(asyncpg.ConnectionDoesNotExistError("x")) == "outage"
    assert classify(asyncpg.TooManyConnectionsError("x")) == "outage"  # 53300
    assert classify(OSError("reset")) == "outage"
    assert classify(asyncpg.UniqueViolationError("x")) == "op"
    assert classify(asyncpg.DataError("x")) == "op"
    assert classify(ValueError("x")) == "op"


def batch_of_puts(calls: list[list[str]]) -> Any:
    """A ``run_batch`` storing each item (a key) and recording every call's items."""

    async def run_batch(conn: asyncpg.Connection, items: list[str]) -> list[str]:
        calls.append(list(items))
        await conn.executemany(
            "INSERT INTO meta (key, value) VALUES ($1, 'v')", [(k,) for k in items]
        )
        return [f"stored {k}" for k in items]

    return run_batch


async def test_adjacent_items_of_a_key_run_in_one_call(db: PostgresDatabase) -> None:
    calls: list[list[str]] = []
    run_batch = batch_of_puts(calls)
    seen: list[str] = []
    gate = asyncio.Event()

    async def held(conn: asyncpg.Connection) -> str:
        await gate.wait()
        return "held"

    first = db.submit(held)
    await asyncio.sleep(0.05)  # the writer is inside the first group: the rest queue up
    futures = [db.submit_batched("k", f"k{i}", run_batch, seen.append) for i in range(50)]
    gate.set()
    assert await first == "held"
    assert await asyncio.gather(*futures) == [f"stored k{i}" for i in range(50)]
    assert calls == [[f"k{i}" for i in range(50)]]  # one call, in queue order
    assert seen == [f"stored k{i}" for i in range(50)]  # each item's on_commit, in order
    assert db.stats.batches_run == 1
    assert db.stats.batched_items == 50
    assert len(await keys(db)) == 50


async def test_only_adjacent_items_merge_so_every_write_keeps_its_place(
    db: PostgresDatabase,
) -> None:
    calls: list[list[str]] = []
    run_batch = batch_of_puts(calls)
    other: list[list[str]] = []
    gate = asyncio.Event()

    async def held(conn: asyncpg.Connection) -> str:
        await gate.wait()
        return "held"

    async def plain(conn: asyncpg.Connection) -> str:
        calls.append(["plain"])
        return "plain"

    first = db.submit(held)
    await asyncio.sleep(0.05)
    futures = [
        db.submit_batched("k", "a", run_batch),
        db.submit_batched("k", "b", run_batch),
        db.submit(plain),
        db.submit_batched("k", "c", run_batch),
        db.submit_batched("other", "d", batch_of_puts(other)),
        db.submit_batched("k", "e", run_batch),
    ]
    gate.set()
    await first
    assert await asyncio.gather(*futures) == [
        "stored a", "stored b", "plain", "stored c", "stored d", "stored e",
    ]  # fmt: skip
    assert calls == [["a", "b"], ["plain"], ["c"], ["e"]]
    assert other == [["d"]]


async def test_a_failing_merged_call_runs_its_items_alone_and_only_the_culprit_fails(
    db: PostgresDatabase,
) -> None:
    await db.write(put("dup"))
    calls: list[list[str]] = []
    run_batch = batch_of_puts(calls)
    gate = asyncio.Event()

    async def held(conn: asyncpg.Connection) -> str:
        await gate.wait()
        return "held"

    first = db.submit(held)
    await asyncio.sleep(0.05)
    items = ["a", "b", "dup", "c", "d"]
    futures = [db.submit_batched("k", item, run_batch) for item in items]
    gate.set()
    await first
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [results[i] for i in (0, 1, 3, 4)] == ["stored a", "stored b", "stored c", "stored d"]
    assert isinstance(results[2], asyncpg.UniqueViolationError)
    # Merged, then one by one up to the culprit, then the others again (still one by one).
    assert calls[0] == items
    assert [c for c in calls[1:] if len(c) != 1] == []
    assert db.stats.batches_split == 1
    assert db.stats.ops_failed == 1
    assert await keys(db) == {"dup", "a", "b", "c", "d"}


async def test_a_merged_call_returning_the_wrong_count_fails_its_items(
    db: PostgresDatabase,
) -> None:
    async def run_batch(conn: asyncpg.Connection, items: list[str]) -> list[str]:
        return []

    futures = [db.submit_batched("k", f"k{i}", run_batch) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert await db.write(put("after")) == "after"
