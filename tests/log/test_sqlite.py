"""What only the SQLite log promises, beyond the contract suite.

Durability across restarts, group commit of concurrent appends, and failure
atomicity: a failed commit consumes no seq, feeds no follower, and leaves
nothing to resynchronise (DESIGN.md invariant 2).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcast.db.sqlite import SqliteDatabase
from agentcast.errors import LogUnavailable
from agentcast.log import SqliteLog, StoredEvent, StreamInfo
from tests.log.test_contract import assert_idle, draft, seqs, take


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "data")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def log(db: SqliteDatabase) -> AsyncIterator[SqliteLog]:
    sqlite_log = SqliteLog(db)
    await sqlite_log.open()
    yield sqlite_log
    await sqlite_log.close()


def fail_commits(db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_commit(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(db, "_commit", failing_commit)


async def test_concurrent_appends_share_one_transaction(db: SqliteDatabase, log: SqliteLog) -> None:
    before = db.stats.groups_committed
    results = await asyncio.gather(*(log.append([draft(f"th_{i % 7}")]) for i in range(100)))
    assert db.stats.groups_committed - before == 1
    assert sorted(e.seq for r in results for e in r if e.thread_id == "th_0") == list(range(1, 16))
    assert sum(len(r) for r in results) == 100


async def test_a_failed_commit_consumes_no_seq_and_feeds_no_follower(
    db: SqliteDatabase, log: SqliteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first,) = await log.append([draft()])
    follower = await log.follow("th_1", 1)
    fail_commits(db, monkeypatch)
    batches = [[draft(), draft()], [draft()], [draft("th_2")]]
    for outcome in await asyncio.gather(*(log.append(b) for b in batches), return_exceptions=True):
        assert isinstance(outcome, LogUnavailable)
    await assert_idle(follower)
    monkeypatch.undo()
    assert (await log.info("th_1")).last_seq == 1
    assert await log.read("th_1") == [first]
    retried = await log.append(batches[0])  # a retry of the same drafts is safe
    assert seqs(retried) == [2, 3]
    assert await take(follower, 2) == retried
    assert await log.read("th_1") == [first, *retried]
    assert seqs(await log.append(batches[2])) == [1]


async def test_the_projection_commits_or_rolls_back_with_the_events(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 3's mechanism: the projector writes in the append's transaction."""
    await db.write(lambda c: c.execute("CREATE TEMP TABLE projected (seq INTEGER)"))

    def project(conn: sqlite3.Connection, events: list[StoredEvent]) -> None:
        conn.executemany("INSERT INTO projected VALUES (?)", [(e.seq,) for e in events])

    log = SqliteLog(db, projector=project)
    await log.open()
    await log.append([draft(), draft()])
    fail_commits(db, monkeypatch)
    with pytest.raises(LogUnavailable):
        await log.append([draft()])
    monkeypatch.undo()
    rows = await db.write(lambda c: c.execute("SELECT seq FROM projected").fetchall())
    assert rows == [(1,), (2,)]
    await log.close()


async def test_a_sqlite_error_in_one_merged_append_fails_it_alone(db: SqliteDatabase) -> None:
    def project(conn: sqlite3.Connection, events: list[StoredEvent]) -> None:
        if any(e.run_id == "run_bad" for e in events):
            conn.execute("INSERT INTO no_such_table VALUES (1)")

    log = SqliteLog(db, projector=project)
    await log.open()
    good1, bad, good2 = [draft()], [draft(run_id="run_bad")], [draft()]
    results = await asyncio.gather(
        log.append(good1), log.append(bad), log.append(good2), return_exceptions=True
    )
    assert isinstance(results[1], LogUnavailable)
    assert isinstance(results[1].__cause__, sqlite3.OperationalError)
    assert [e.event_id for e in await log.read("th_1")] == [good1[0].event_id, good2[0].event_id]
    assert seqs(await log.read("th_1")) == [1, 2]
    await log.close()


async def test_epoch_seqs_and_idempotence_survive_a_restart(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path)
    log = SqliteLog(db)
    await log.open()
    empty = await log.info("th_empty")  # a subscriber saw this epoch before any event
    stored = await log.append([draft(), draft()])
    epoch = (await log.info("th_1")).epoch
    await log.close()
    await db.close()

    db = SqliteDatabase(tmp_path)
    log = SqliteLog(db)
    await log.open()
    assert await log.info("th_empty") == empty
    assert await log.info("th_1") == StreamInfo(epoch, 1, 2)
    assert await log.append([draft("th_1", event_id=stored[0].event_id)]) == stored[:1]
    assert seqs(await log.append([draft()])) == [3]
    assert seqs(await log.append([draft("th_empty")])) == [1]
    assert (await log.info("th_empty")).epoch == empty.epoch
    await log.close()
    await db.close()


async def test_close_finishes_appends_already_made(db: SqliteDatabase) -> None:
    log = SqliteLog(db)
    await log.open()
    appends = [asyncio.ensure_future(log.append([draft()])) for _ in range(10)]
    await asyncio.sleep(0)  # each append is waiting for its commit
    await log.close()
    assert sorted(seqs([e for a in appends for e in a.result()])) == list(range(1, 11))
    with pytest.raises(LogUnavailable, match="log closed"):
        await log.append([draft()])
    await log.open()  # reopening accepts calls again
    assert seqs(await log.append([draft()])) == [11]
    await log.close()


async def test_stream_info_is_answered_from_memory_and_follows_commits(
    db: SqliteDatabase, log: SqliteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect storm's ``info`` calls cost no database read once a stream is known."""
    await log.append([draft(), draft(), draft()])
    first = await log.info("th_1")
    assert first.last_seq == 3
    reads = 0
    real_read = db.read

    async def counting_read(op):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await real_read(op)

    monkeypatch.setattr(db, "read", counting_read)
    await log.append([draft(), draft()])
    assert await log.info("th_1") == StreamInfo(first.epoch, 1, 5)
    await log.trim("th_1", 4)
    assert await log.info("th_1") == StreamInfo(first.epoch, 4, 5)
    follower = await log.follow("th_1", 5, first.epoch)
    assert follower.start.recovered
    await follower.aclose()
    assert reads == 0
    # What the database says agrees with what was answered from memory.
    monkeypatch.setattr(db, "read", real_read)
    fresh = SqliteLog(db)
    await fresh.open()
    assert await fresh.info("th_1") == StreamInfo(first.epoch, 4, 5)
    await fresh.close()


async def test_a_stale_database_read_never_moves_a_cached_stream_back(
    db: SqliteDatabase,
) -> None:
    """A lookup that raced a commit (older snapshot) merges forward, never back."""
    log = SqliteLog(db, info_threads=2)
    await log.open()
    await log.append([draft("th_a"), draft("th_a")])
    known = await log.info("th_a")
    stale = StreamInfo(known.epoch, 1, 1)
    assert log._remember("th_a", stale) == known  # the merge rule itself
    # Bounded: the least recently used stream is forgotten, then read back correctly.
    await log.info("th_b")
    await log.info("th_c")
    assert list(log._infos) == ["th_b", "th_c"]
    assert await log.info("th_a") == known
    await log.close()
