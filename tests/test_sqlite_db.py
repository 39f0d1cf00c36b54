"""SqliteDatabase: the directory lock, migrations, group commit and its failures.

Group-commit tests hold the writer thread inside a "gate" op, queue the ops
under test behind it, then open the gate: everything queued meanwhile must
commit as ONE group (docs/architecture.md invariant 2, "group commit makes that cheap").
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentcast.db.schema import SCHEMA_VERSION
from agentcast.db.sqlite import LOCK_FILENAME, SqliteDatabase, WriteOutcomeUnknown
from agentcast.errors import DataDirLocked, InternalError, LogUnavailable
from tests.utils import MS, seconds, wait_until


class Gate:
    """An op that blocks the writer thread until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def op(self, conn: sqlite3.Connection) -> str:
        self.entered.set()
        assert self.released.wait(5)
        return "gate"


async def hold_writer(db: SqliteDatabase) -> tuple[Gate, asyncio.Future[str]]:
    gate = Gate()
    task = asyncio.ensure_future(db.write(gate.op))
    assert await asyncio.to_thread(gate.entered.wait, 5)
    return gate, task


def insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO streams (thread_id, epoch) VALUES (?, 'e')", (f"th_{value}",))
        return value

    return op


async def thread_ids(db: SqliteDatabase) -> list[str]:
    rows = await db.read(lambda c: c.execute("SELECT thread_id FROM streams ORDER BY 1").fetchall())
    return [r[0] for r in rows]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "data")
    await database.open()
    yield database
    await database.close()


# --- open, lock, migrations -------------------------------------------------------------


async def test_open_creates_the_directory_the_schema_and_a_wal_database(
    db: SqliteDatabase,
) -> None:
    assert db.path == db.data_dir / "agentcast.db"
    assert (db.data_dir / LOCK_FILENAME).exists()
    assert db.synchronous == "FULL"

    def probe(conn: sqlite3.Connection) -> tuple[Any, ...]:
        version = conn.execute("SELECT version FROM schema_version").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return version, mode, {t[0] for t in tables}

    version, mode, tables = await db.read(probe)
    assert version == [(SCHEMA_VERSION,)]
    assert mode == "wal"
    assert {"streams", "events", "schema_version"} <= tables


async def test_writer_and_readers_keep_statement_journals_in_memory(db: SqliteDatabase) -> None:
    """temp_store=MEMORY (2): a 64 KiB op's savepoint journal never becomes a file."""

    def temp_store(conn: sqlite3.Connection) -> tuple[int, int]:
        return conn.execute("PRAGMA temp_store").fetchone()[0], conn.execute(
            "PRAGMA synchronous"
        ).fetchone()[0]

    assert await db.write(temp_store) == (2, 2)  # MEMORY; FULL is unchanged
    assert await db.read(temp_store) == (2, 2)


async def test_open_and_close_are_idempotent(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path)
    await db.open()
    await db.open()
    assert await db.write(insert(1)) == 1
    await db.close()
    await db.close()
    assert not db.is_open
    await db.open()  # and it can be opened again
    assert await thread_ids(db) == ["th_1"]
    await db.close()


async def test_a_second_database_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    """Invariant 10, within one process: flock is per open file description."""
    first = SqliteDatabase(tmp_path / "data")
    await first.open()
    second = SqliteDatabase(tmp_path / "data", filename="other.db")
    with pytest.raises(DataDirLocked, match=str(tmp_path / "data")):
        await second.open()
    assert not second.is_open
    await first.close()
    await second.open()  # released by close
    await second.close()


async def test_another_process_is_refused(db: SqliteDatabase) -> None:
    script = (
        "import asyncio, sys\n"
        "from agentcast.db.sqlite import SqliteDatabase\n"
        "from agentcast.errors import DataDirLocked\n"
        "try:\n"
        f"    asyncio.run(SqliteDatabase({str(db.data_dir)!r}).open())\n"
        "except DataDirLocked as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 3
    assert str(db.data_dir) in out.decode()
    assert "already in use" in out.decode()


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path)
    await db.open()
    await db.close()
    with sqlite3.connect(db.path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(InternalError, match="newer than this agentcast"):
        await db.open()
    assert not db.is_open
    with sqlite3.connect(db.path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    await db.open()  # the failed open released the lock
    await db.close()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteDatabase(tmp_path, synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="readers"):
        SqliteDatabase(tmp_path, readers=0)


# --- write, read --------------------------------------------------------------------------------


async def test_reads_see_committed_writes_and_cannot_write(db: SqliteDatabase) -> None:
    assert await db.write(insert(1)) == 1
    assert await thread_ids(db) == ["th_1"]
    with pytest.raises(LogUnavailable, match="read failed"):
        await db.read(insert(2))


async def test_calls_on_a_closed_database_are_unavailable(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path)
    with pytest.raises(LogUnavailable, match="not open"):
        await db.write(insert(1))
    with pytest.raises(LogUnavailable, match="not open"):
        await db.read(insert(1))


async def test_concurrent_writes_commit_as_one_group(db: SqliteDatabase) -> None:
    gate, held = await hold_writer(db)
    before = db.stats.groups_committed
    writes = [asyncio.ensure_future(db.write(insert(i))) for i in range(100)]
    await asyncio.sleep(MS)  # every write is queued behind the gate
    gate.released.set()
    assert await held == "gate"
    assert await asyncio.gather(*writes) == list(range(100))
    assert db.stats.groups_committed - before == 2  # the gate's group, then all 100
    assert len(await thread_ids(db)) == 100


async def test_settled_waits_for_the_callbacks_of_every_commit_readers_can_see(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader sees a commit before its callbacks run; ``settled()`` bridges that moment."""
    await db.write(insert(1))
    await asyncio.wait_for(db.settled(), seconds(1))  # nothing pending: at once
    held: list[tuple[Any, ...]] = []
    real_deliver = db._deliver
    monkeypatch.setattr(db, "_deliver", lambda *args: held.append(args))
    write = asyncio.ensure_future(db.write(insert(2)))
    await wait_until(lambda: bool(held), message="the group handed to the loop")
    assert await thread_ids(db) == ["th_1", "th_2"]  # committed: readers see it already
    waiter = asyncio.ensure_future(db.settled())
    await asyncio.sleep(MS)
    assert not waiter.done()  # its callbacks have not run yet
    real_deliver(*held[0])
    await asyncio.wait_for(waiter, seconds(1))
    assert await write == 2


async def test_a_failing_op_is_rolled_back_alone(db: SqliteDatabase) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        insert(2)(conn)
        raise ValueError("op failed")

    gate, held = await hold_writer(db)
    writes = [asyncio.ensure_future(db.write(op)) for op in (insert(1), half_then_fail, insert(3))]
    await asyncio.sleep(MS)
    gate.released.set()
    await held
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert results[0] == 1
    assert results[2] == 3
    assert isinstance(results[1], ValueError)
    assert await thread_ids(db) == ["th_1", "th_3"]
    assert db.stats.groups_failed == 0


async def test_a_failing_op_alone_in_its_group_is_rolled_back(db: SqliteDatabase) -> None:
    """A one-op group has no savepoint: its transaction is rolled back instead."""

    def half_then_fail(conn: sqlite3.Connection) -> None:
        insert(2)(conn)
        raise ValueError("op failed")

    statements: list[str] = []
    before = db.stats.groups_committed
    with pytest.raises(ValueError, match="op failed"):
        await db.write(half_then_fail)
    assert await thread_ids(db) == []
    assert db.stats.groups_failed == 0

    def traced(conn: sqlite3.Connection) -> int:
        conn.set_trace_callback(statements.append)
        return insert(4)(conn)

    assert await db.write(traced) == 4
    await db.write(lambda conn: conn.set_trace_callback(None))
    assert await thread_ids(db) == ["th_4"]
    assert db.stats.groups_committed - before == 2
    assert "COMMIT" in statements
    assert not [s for s in statements if "agentcast_op" in s]  # no savepoint to release


async def test_the_wal_starts_over_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    """With commits back to back, the background checkpoint never catches the writer.

    SQLite starts the WAL over only when a write transaction begins with every
    frame checkpointed; without the writer's own catch-up the WAL grew by a
    frame or more per commit, for ever.
    """
    db = SqliteDatabase(tmp_path / "data", checkpoint_interval=0.01, wal_restart_frames=64)
    await db.open()
    wal = db.path.with_name(db.path.name + "-wal")
    commits = 0
    largest = 0

    async def writer(k: int) -> None:
        nonlocal commits, largest
        for i in range(250):
            await db.write(insert(k * 1000 + i))
            commits += 1
            largest = max(largest, wal.stat().st_size)

    try:
        await asyncio.gather(*(writer(k) for k in range(8)))  # the writer is never idle
    finally:
        await db.close()
    assert commits == 2000
    assert db.stats.wal_restarts >= 2
    # Never started over, the WAL took every frame of the 2,000 commits (5.6 MB here);
    # started over, it stays near the frames of one checkpoint interval (0.9 MB here).
    assert largest < 2_500_000, largest


async def test_a_failed_commit_fails_every_op_and_commits_nothing(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error (injected)")

    gate, held = await hold_writer(db)
    monkeypatch.setattr(db, "_commit", failing_commit)
    writes = [asyncio.ensure_future(db.write(insert(i))) for i in range(3)]
    await asyncio.sleep(MS)
    gate.released.set()
    for outcome in await asyncio.gather(held, *writes, return_exceptions=True):
        assert isinstance(outcome, LogUnavailable)
        assert isinstance(outcome.__cause__, sqlite3.OperationalError)
    assert db.stats.groups_failed == 2  # the gate's group, then the other three
    assert await thread_ids(db) == []
    monkeypatch.undo()
    assert await db.write(insert(7)) == 7  # the writer recovered
    assert await thread_ids(db) == ["th_7"]


async def test_results_and_callbacks_come_after_the_commit(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    real_commit = db._commit

    def counting_commit(conn: sqlite3.Connection) -> None:
        real_commit(conn)
        commits.append(1)

    monkeypatch.setattr(db, "_commit", counting_commit)
    seen: list[int] = []
    result = await db.write(insert(1), on_commit=lambda _: seen.append(len(commits)))
    assert result == 1
    assert seen == [1]


async def test_on_commit_runs_even_if_the_caller_was_cancelled(db: SqliteDatabase) -> None:
    gate, held = await hold_writer(db)
    seen: list[int] = []
    write = asyncio.ensure_future(db.write(insert(1), on_commit=seen.append))
    await asyncio.sleep(MS)
    write.cancel()
    gate.released.set()
    await held
    await wait_until(lambda: seen == [1], message="on_commit of a cancelled write")
    assert await thread_ids(db) == ["th_1"]


async def test_close_commits_what_is_queued_then_refuses(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path)
    await db.open()
    gate, held = await hold_writer(db)
    writes = [asyncio.ensure_future(db.write(insert(i))) for i in range(10)]
    await asyncio.sleep(MS)
    closing = asyncio.ensure_future(db.close())
    await asyncio.sleep(MS)
    with pytest.raises(LogUnavailable):
        await db.write(insert(99))
    gate.released.set()
    await held
    assert await asyncio.gather(*writes) == list(range(10))
    await closing
    await db.open()
    assert len(await thread_ids(db)) == 10
    await db.close()


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [0.02, 3600.0], ids=["checkpointing", "never"])
async def test_checkpoints_run_off_the_writer_thread(tmp_path: Path, interval: float) -> None:
    db = SqliteDatabase(tmp_path, checkpoint_interval=interval)
    await db.open()
    size = db.path.stat().st_size

    def fill(conn: sqlite3.Connection) -> None:
        rows = [(f"th_{i}", "x" * 1000) for i in range(100)]
        conn.executemany("INSERT INTO streams (thread_id, epoch) VALUES (?, ?)", rows)

    await db.write(fill)  # ~100 KB, in the WAL (autocheckpoint is off)
    if interval < 1:
        await wait_until(lambda: db.path.stat().st_size > size + 50_000, message="checkpoint")
    else:
        await asyncio.sleep(50 * MS)
        assert db.path.stat().st_size == size
    await db.close()
    wal = db.path.with_name(db.path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # TRUNCATE at close


# --- NORMAL mode: an unclean shutdown must not let a seq be reissued under an epoch ---------------


@pytest.mark.parametrize(
    ("previous", "state", "rotated"),
    [("NORMAL", "open", True), ("FULL", "open", False), ("NORMAL", "closed", False)],
    ids=["unclean_normal", "unclean_full", "clean_normal"],
)
async def test_epochs_rotate_after_an_unclean_normal_session(
    tmp_path: Path, previous: str, state: str, rotated: bool
) -> None:
    db = SqliteDatabase(tmp_path, synchronous=previous)  # type: ignore[arg-type]
    await db.open()
    await db.write(insert(1))
    await db.close()
    lock = tmp_path / LOCK_FILENAME
    marker = json.loads(lock.read_text())
    assert marker["state"] == "closed"
    # Only the session's state changes: the database is still the one the marker names.
    lock.write_text(json.dumps({**marker, "pid": 1, "state": state, "synchronous": previous}))

    db = SqliteDatabase(tmp_path)
    await db.open()
    (epoch,) = await db.read(lambda c: c.execute("SELECT epoch FROM streams").fetchone())
    assert db.epochs_rotated is rotated
    assert (epoch != "e") is rotated
    assert json.loads(lock.read_text())["state"] == "open"
    await db.close()


# --- a dead writer thread: every write fails at once, a new writer takes over ------------


def writer_dies_holding_a_group(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """The writer's next group blocks until released, then an exception escapes its loop."""
    entered, release = threading.Event(), threading.Event()

    def dying(conn: sqlite3.Connection, group: list[Any]) -> Any:
        entered.set()
        assert release.wait(seconds(5))
        raise RuntimeError("writer bug (injected)")

    monkeypatch.setattr(db, "_run_group", dying)
    return entered, release


async def test_a_dead_writer_fails_every_pending_write_at_once_and_is_restarted(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = writer_dies_holding_a_group(db, monkeypatch)
    restarting, restart = threading.Event(), threading.Event()
    real_connect = db._connect_writer

    def held_connect() -> sqlite3.Connection:
        restarting.set()
        assert restart.wait(seconds(5))
        return real_connect()

    monkeypatch.setattr(db, "_connect_writer", held_connect)
    in_flight = db.submit(insert(1))
    assert await asyncio.to_thread(entered.wait, seconds(5))
    queued = [db.submit(insert(i)) for i in (2, 3)]  # behind the group the writer holds
    release.set()
    async with asyncio.timeout(seconds(5)):
        outcomes = await asyncio.gather(in_flight, *queued, return_exceptions=True)
    assert [type(o) for o in outcomes] == [WriteOutcomeUnknown, LogUnavailable, LogUnavailable]
    assert all(isinstance(o, BaseException) and "died" in str(o) for o in outcomes)
    assert all(isinstance(o, BaseException) and type(o.__cause__) is RuntimeError for o in outcomes)
    # Until a new writer runs, a write fails at once (and a health probe with it).
    assert not db.writer_alive
    assert isinstance(db.writer_error, RuntimeError)
    async with asyncio.timeout(seconds(5)):
        with pytest.raises(LogUnavailable, match="died"):
            await db.write(insert(4))
    assert await asyncio.to_thread(restarting.wait, seconds(5))
    monkeypatch.undo()
    restart.set()
    await wait_until(lambda: db.writer_alive, within=seconds(5), message="a new writer")
    assert db.writer_error is None
    async with asyncio.timeout(seconds(5)):
        assert await db.write(insert(5)) == 5
    assert await thread_ids(db) == ["th_5"]  # nothing of the dead writer's ops committed
    assert (db.stats.writer_deaths, db.stats.writer_restarts) == (1, 1)


async def test_a_writer_that_cannot_restart_keeps_failing_fast_until_it_can(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed restart leaves the database broken, never hanging; the next write retries it."""
    _, release = writer_dies_holding_a_group(db, monkeypatch)

    def no_connection() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file (injected)")

    monkeypatch.setattr(db, "_connect_writer", no_connection)
    write = db.submit(insert(1))
    release.set()
    async with asyncio.timeout(seconds(5)):
        with pytest.raises(WriteOutcomeUnknown):
            await write
    await wait_until(lambda: db.stats.writer_restart_failures == 1, within=seconds(5))
    assert not db.writer_alive
    async with asyncio.timeout(seconds(5)):
        with pytest.raises(LogUnavailable, match="died"):
            await db.write(insert(2))  # refused at once; it tries a new writer again
    await wait_until(lambda: db.stats.writer_restart_failures == 2, within=seconds(5))
    assert not db.writer_alive
    monkeypatch.undo()  # whatever broke the writer is repaired
    with pytest.raises(LogUnavailable, match="died"):
        await db.write(insert(3))
    await wait_until(lambda: db.writer_alive, within=seconds(5), message="a new writer")
    async with asyncio.timeout(seconds(5)):
        assert await db.write(insert(4)) == 4
    assert await thread_ids(db) == ["th_4"]
    assert (db.stats.writer_deaths, db.stats.writer_restarts) == (1, 1)


async def test_close_after_the_writer_died_releases_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = SqliteDatabase(tmp_path)
    await db.open()
    entered, release = writer_dies_holding_a_group(db, monkeypatch)
    write = db.submit(insert(1))
    assert await asyncio.to_thread(entered.wait, seconds(5))
    async with asyncio.timeout(seconds(5)):
        closing = asyncio.ensure_future(db.close())
        release.set()
        with pytest.raises(WriteOutcomeUnknown):
            await write
        await closing
    monkeypatch.undo()
    assert not db.writer_alive
    await db.open()  # the lock was released; a fresh writer
    assert db.writer_alive
    assert await db.write(insert(2)) == 2
    await db.close()
