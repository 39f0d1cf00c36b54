"""Epochs after a restore: a position must never silently name other events.

A client holds ``(epoch, seq)``. If the database goes back in time (a backup
restored, the file replaced), the next append reuses a ``seq`` the client has
already seen under the same epoch, and its resume would skip the new event
without a word. Each case below: a client saw seqs 1..3, the data directory
is restored or tampered with, the server opens it and appends one event, and
the client resumes from ``(epoch, 3)``. Where the change can be detected
every stream must get a new epoch (``recovered: false``, delivery from the
first event); a clean restart must keep the epoch.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agentcast.db.lock import LOCK_FILENAME
from agentcast.db.sqlite import SqliteDatabase
from agentcast.log import FollowStart, SqliteLog, StreamInfo
from tests.log.test_contract import draft


async def first_life(data_dir: Path, backup_after: int | None = None) -> StreamInfo:
    """Append three events to ``th_1`` (an online backup after ``backup_after`` of them)."""
    db = SqliteDatabase(data_dir)
    log = SqliteLog(db)
    await log.open()
    for n in range(1, 4):
        await log.append([draft()])
        if n == backup_after:
            backup(db.path, data_dir.parent / "backup.db")
    info = await log.info("th_1")
    await log.close()
    await db.close()
    return info


def backup(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while the server runs."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def restore(copy: Path, data_dir: Path) -> None:
    """Put ``copy`` in place of the database, as the restore procedure says (no stale WAL)."""
    database = data_dir / "agentcast.db"
    for stale in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(copy, database)


async def second_life(data_dir: Path, seen: StreamInfo) -> tuple[SqliteDatabase, FollowStart]:
    """Open again, append one event, resume the client that saw ``seen``."""
    db = SqliteDatabase(data_dir)
    log = SqliteLog(db)
    await log.open()
    await log.append([draft()])
    follower = await log.follow("th_1", seen.last_seq, seen.epoch)
    start = follower.start
    await follower.aclose()
    await log.close()
    await db.close()
    return db, start


async def test_a_clean_restart_keeps_every_epoch(tmp_path: Path) -> None:
    seen = await first_life(tmp_path / "data")
    db, start = await second_life(tmp_path / "data", seen)
    assert not db.epochs_rotated
    assert db.rotation is None
    assert db.streams_rotated == 0
    assert start == FollowStart(seen.epoch, 3, True)  # then the new event 4, nothing skipped


def delete_marker(data_dir: Path) -> None:
    (data_dir / LOCK_FILENAME).unlink()


def corrupt_marker(data_dir: Path) -> None:
    (data_dir / LOCK_FILENAME).write_text('{"pid": 12, "state": "clo')


def marker_of_another_session(data_dir: Path) -> None:
    lock = data_dir / LOCK_FILENAME
    marker = json.loads(lock.read_text())
    lock.write_text(json.dumps({**marker, "stamp": "0123456789abcdef"}))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (delete_marker, "the lock marker is missing or unreadable"),
        (corrupt_marker, "the lock marker is missing or unreadable"),
        (marker_of_another_session, "not the state the last session left"),
    ],
    ids=["marker_deleted", "marker_corrupt", "marker_ahead"],
)
async def test_a_marker_that_does_not_match_rotates_every_epoch(
    tmp_path: Path, tamper: Callable[[Path], None], reason: str
) -> None:
    seen = await first_life(tmp_path / "data")
    tamper(tmp_path / "data")
    db, start = await second_life(tmp_path / "data", seen)
    assert db.epochs_rotated
    assert db.rotation is not None
    assert reason in db.rotation
    assert db.streams_rotated == 1
    assert not start.recovered
    assert start.epoch != seen.epoch
    assert start.after_seq == 0  # delivery restarts from the first event


async def test_an_older_copy_of_the_database_rotates_every_epoch(tmp_path: Path) -> None:
    """The marker is "ahead of" a backup taken while the server ran (restored after a stop)."""
    data = tmp_path / "data"
    seen = await first_life(data, backup_after=2)  # the copy lacks event 3
    restore(tmp_path / "backup.db", data)
    db, start = await second_life(data, seen)  # the new event is seq 3 again
    assert db.rotation is not None
    assert "restored from a backup" in db.rotation
    assert start == FollowStart(start.epoch, 0, False)
    assert start.epoch != seen.epoch


async def test_another_database_in_place_of_the_file_rotates_every_epoch(tmp_path: Path) -> None:
    seen = await first_life(tmp_path / "data")
    other = await first_life(tmp_path / "other")
    probe = SqliteDatabase(tmp_path / "other")
    await probe.open()
    other_id = probe.database_id
    await probe.close()
    restore(tmp_path / "other" / "agentcast.db", tmp_path / "data")
    db, start = await second_life(tmp_path / "data", seen)
    assert db.rotation is not None
    assert "the database file was replaced" in db.rotation
    assert db.database_id == other_id  # the file's identity is kept, the marker follows it
    assert not start.recovered
    assert start.epoch not in (seen.epoch, other.epoch)


async def test_a_rotation_is_recorded_so_the_next_clean_restart_keeps_the_new_epochs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    seen = await first_life(data)
    delete_marker(data)
    db, start = await second_life(data, seen)
    assert db.epochs_rotated
    again, resumed = await second_life(data, StreamInfo(start.epoch, 1, 4))
    assert not again.epochs_rotated
    assert resumed == FollowStart(start.epoch, 4, True)


async def test_rotate_epochs_on_request_rotates_even_a_clean_directory(tmp_path: Path) -> None:
    """The restore procedure's own step: what no marker can reveal (a hot copy after a crash)."""
    data = tmp_path / "data"
    seen = await first_life(data)
    db = SqliteDatabase(data)
    await db.open(rotate_epochs=True)
    await db.close()
    assert db.rotation is not None
    assert "requested" in db.rotation
    assert db.streams_rotated == 1
    after, start = await second_life(data, seen)
    assert not after.epochs_rotated  # rotated once, by the request
    assert not start.recovered


async def test_a_database_from_before_identities_is_not_rotated_on_upgrade(
    tmp_path: Path,
) -> None:
    """Schema 1 had no identity and its marker none: an upgrade must not cost a replay."""
    data = tmp_path / "data"
    seen = await first_life(data)
    with contextlib.closing(sqlite3.connect(data / "agentcast.db")) as conn:
        conn.execute("DROP TABLE meta")
        conn.execute("UPDATE schema_version SET version = 1")
        conn.commit()
    lock = data / LOCK_FILENAME
    lock.write_text(json.dumps({"pid": 1, "state": "closed", "synchronous": "FULL"}))
    db, start = await second_life(data, seen)
    assert not db.epochs_rotated
    assert db.database_id is not None  # identified from now on
    assert start == FollowStart(seen.epoch, 3, True)
