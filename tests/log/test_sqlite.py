"""What only the SQLite log promises, beyond the contract suite.

Durability across restarts, group commit of concurrent appends, and failure
atomicity: a failed commit consumes no seq, feeds no follower, and leaves
nothing to resynchronise (docs/architecture.md invariant 2).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentcast.db.sqlite import SqliteDatabase, WriteOutcomeUnknown
from agentcast.errors import AppendRejected, LogUnavailable, NotFound
from agentcast.log import SqliteLog, StoredEvent, StreamInfo
from tests.log.test_contract import assert_idle, draft, seqs, take
from tests.utils import seconds, wait_until


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


def note_submits(db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch) -> list[asyncio.Event]:
    """Events set as the 1st, 2nd, ... op reaches the writer's queue (a gate to order by)."""
    queued = [asyncio.Event() for _ in range(8)]
    real_submit = db.submit
    count = 0

    def noting_submit(op: Any, *, on_commit: Any = None) -> asyncio.Future[Any]:
        nonlocal count
        future = real_submit(op, on_commit=on_commit)
        queued[count].set()
        count += 1
        return future

    monkeypatch.setattr(db, "submit", noting_submit)
    return queued


async def hold_writer(db: SqliteDatabase) -> tuple[threading.Event, asyncio.Future[None]]:
    """Block the writer thread inside an op until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def gate(conn: sqlite3.Connection) -> None:
        entered.set()
        assert release.wait(seconds(5))

    held = asyncio.ensure_future(db.write(gate))
    assert await asyncio.to_thread(entered.wait, seconds(5))
    return release, held


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


# --- stream infos: a look-up that races a commit ----------------------------------------


async def test_a_commit_during_a_stream_lookup_is_not_lost(
    db: SqliteDatabase, log: SqliteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miss reads the row; a commit landing before it is cached must still count.

    The commit callback moves only cached infos, and the thread is not cached
    yet: the stale row used to be cached, so a client resuming at the real
    head was told ``recovered: false`` and replayed the whole thread.
    """
    await log.append([draft(), draft()])  # appends do not cache th_1: a miss follows
    read_done, release = asyncio.Event(), asyncio.Event()
    real_read = db.read

    async def held_read(op: Callable[[sqlite3.Connection], Any]) -> Any:
        row = await real_read(op)  # the row as of now: last_seq 2
        read_done.set()
        await release.wait()  # hold it while a commit lands
        return row

    monkeypatch.setattr(db, "read", held_read)
    async with asyncio.timeout(seconds(5)):
        lookup = asyncio.ensure_future(log.info("th_1"))
        await read_done.wait()
        (third,) = await log.append([draft()])  # committed, and its callback ran
        release.set()
        info = await lookup
    monkeypatch.undo()
    assert third.seq == 3
    assert info.last_seq == 3
    assert await log.info("th_1") == info  # what was cached
    follower = await log.follow("th_1", 3, info.epoch)
    assert follower.start.recovered
    assert follower.start.after_seq == 3
    await follower.aclose()


async def test_a_commit_in_the_group_that_creates_a_stream_is_not_lost(
    db: SqliteDatabase, log: SqliteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creating write and an append commit together; the append's callback runs first."""
    queued = note_submits(db, monkeypatch)
    release, held = await hold_writer(db)
    async with asyncio.timeout(seconds(5)):
        await queued[0].wait()  # the gate
        lookup = asyncio.ensure_future(log.info("th_new"))
        await queued[1].wait()  # the stream's creation, behind the gate
        append = asyncio.ensure_future(log.append([draft("th_new")]))
        await queued[2].wait()  # the append, in the same group
        release.set()
        await held
        info, stored = await asyncio.gather(lookup, append)
    assert seqs(stored) == [1]
    assert info.last_seq == 1
    follower = await log.follow("th_new", 1, info.epoch)
    assert follower.start.recovered
    await follower.aclose()


# --- failed appends: transient (retry) or permanent (give up this one) ------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite3.IntegrityError("UNIQUE constraint failed: runs.run_id"), AppendRejected),
        (sqlite3.DataError("string or blob too big"), AppendRejected),
        (sqlite3.ProgrammingError("Incorrect number of bindings supplied"), AppendRejected),
        (sqlite3.InterfaceError("Error binding parameter 1"), AppendRejected),
        (KeyError("run_unknown"), AppendRejected),
        (NotFound("run not found"), AppendRejected),
        (sqlite3.OperationalError("database or disk is full"), LogUnavailable),
        (sqlite3.OperationalError("disk I/O error"), LogUnavailable),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
@pytest.mark.parametrize("merged", [False, True], ids=["alone", "merged"])
async def test_a_failed_append_is_transient_or_permanent(
    db: SqliteDatabase, error: Exception, expected: type[Exception], merged: bool
) -> None:
    """The bridge retries LogUnavailable for ever: only the database's trouble may be one."""

    def project(conn: sqlite3.Connection, events: list[StoredEvent]) -> None:
        if any(e.run_id == "run_bad" for e in events):
            raise error

    log = SqliteLog(db, projector=project)
    await log.open()
    bad = [draft(run_id="run_bad"), draft(run_id="run_bad")]
    if merged:  # appended in the same loop iteration as a good one: one database op
        good = [draft()]
        stored, outcome = await asyncio.gather(
            log.append(good), log.append(bad), return_exceptions=True
        )
        assert seqs(stored) == [1]  # type: ignore[arg-type]
    else:
        outcome = (await asyncio.gather(log.append(bad), return_exceptions=True))[0]
    assert type(outcome) is expected
    assert outcome.__cause__ is error
    assert isinstance(outcome, LogUnavailable) is (expected is LogUnavailable)
    assert seqs(await log.read("th_1")) == ([1] if merged else [])
    assert seqs(await log.append([draft()])) == [2 if merged else 1]  # the log goes on
    await log.close()


async def test_a_real_constraint_violation_rejects_only_that_append(db: SqliteDatabase) -> None:
    def project(conn: sqlite3.Connection, events: list[StoredEvent]) -> None:
        if any(e.run_id == "run_bad" for e in events):  # th_1's row exists: UNIQUE fails
            conn.execute("INSERT INTO streams (thread_id, epoch) VALUES ('th_1', 'x')")

    log = SqliteLog(db, projector=project)
    await log.open()
    ok = await log.append([draft()])
    with pytest.raises(AppendRejected, match="UNIQUE constraint failed") as raised:
        await log.append([draft(run_id="run_bad")])
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert await log.read("th_1") == ok
    assert seqs(await log.append([draft()])) == [2]
    await log.close()


# --- a dead writer thread ---------------------------------------------------------------


async def test_a_dead_writer_fails_appends_at_once_and_the_log_recovers(
    db: SqliteDatabase, log: SqliteLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer dies with an append in flight: it fails now, not never; then appends work."""
    (first,) = await log.append([draft()])
    follower = await log.follow("th_1", 1)
    before = await log.info("th_1")
    assert before.last_seq == 1
    release, held = await hold_writer(db)

    def dying(conn: sqlite3.Connection, group: list[Any]) -> Any:
        raise RuntimeError("writer bug (injected)")

    monkeypatch.setattr(db, "_run_group", dying)  # the gate's group already runs the real one
    queued = note_submits(db, monkeypatch)
    async with asyncio.timeout(seconds(5)):
        in_flight = asyncio.ensure_future(log.append([draft(), draft()]))
        await queued[0].wait()
        release.set()
        await held
        with pytest.raises(WriteOutcomeUnknown, match=r"writer thread .* died") as raised:
            await in_flight
    assert isinstance(raised.value, LogUnavailable)  # the bridge retries it
    assert isinstance(raised.value.__cause__, RuntimeError)
    monkeypatch.undo()
    await wait_until(lambda: db.writer_alive, within=seconds(5), message="a new writer")
    await assert_idle(follower)  # woken to re-read: nothing was committed
    assert await log.info("th_1") == before  # re-read from the database: unchanged
    async with asyncio.timeout(seconds(5)):
        stored = await log.append([draft()])
        assert seqs(stored) == [2]
        assert await take(follower, 1) == stored
    assert await log.read("th_1") == [first, *stored]
