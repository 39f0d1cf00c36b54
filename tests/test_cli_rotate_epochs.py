"""``agentcast db rotate-epochs``: the restore procedure's step, and its refusals.

The command runs in-process (Typer's runner) on a worker thread, because it
runs its own event loop; the test's loop meanwhile holds a database open
where a test needs "a server holds the directory".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner, Result

from agentcast.cli import app
from agentcast.db.sqlite import SqliteDatabase
from agentcast.log import FollowStart, SqliteLog, StreamInfo
from tests.log.test_contract import draft


async def rotate_epochs(data_dir: Path) -> Result:
    runner = CliRunner()
    args = ["db", "rotate-epochs", "--data-dir", str(data_dir)]
    return await asyncio.to_thread(runner.invoke, app, args, env={"AGENTCAST_DATA_DIR": None})


async def two_streams(data_dir: Path) -> list[StreamInfo]:
    db = SqliteDatabase(data_dir)
    log = SqliteLog(db)
    await log.open()
    await log.append([draft("th_1"), draft("th_1"), draft("th_2")])
    infos = [await log.info("th_1"), await log.info("th_2")]
    await log.close()
    await db.close()
    return infos


async def test_rotate_epochs_gives_every_stream_a_new_epoch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = await two_streams(data)
    result = await rotate_epochs(data)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"2 streams in {data / 'agentcast.db'} got a new epoch; clients will resume with "
        "recovered: false\n"
    )
    db = SqliteDatabase(data)
    log = SqliteLog(db)
    await log.open()
    assert not db.epochs_rotated  # the command closed the directory cleanly
    after = [await log.info("th_1"), await log.info("th_2")]
    assert [(i.first_seq, i.last_seq) for i in after] == [(1, 2), (1, 1)]  # events kept
    assert {i.epoch for i in after}.isdisjoint(i.epoch for i in before)
    follower = await log.follow("th_1", 2, before[0].epoch)
    assert follower.start == FollowStart(after[0].epoch, 0, False)
    await follower.aclose()
    await log.close()
    await db.close()


async def test_rotate_epochs_refuses_while_a_server_holds_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = await two_streams(data)
    server = SqliteDatabase(data)
    await server.open()
    try:
        result = await rotate_epochs(data)
    finally:
        await server.close()
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "cannot rotate epochs while the data directory is in use" in message
    assert "Stop the server first" in message
    db = SqliteDatabase(data)
    log = SqliteLog(db)
    await log.open()
    assert [await log.info("th_1"), await log.info("th_2")] == before  # nothing rotated
    await log.close()
    await db.close()


async def test_rotate_epochs_refuses_a_directory_without_a_database(tmp_path: Path) -> None:
    result = await rotate_epochs(tmp_path / "nothing")
    assert result.exit_code == 1
    assert "no database at" in " ".join(result.stderr.split())
    assert not (tmp_path / "nothing").exists()  # nothing was created either
