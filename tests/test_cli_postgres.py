"""``agentcast db upgrade`` and ``db rotate-epochs --database-url`` on PostgreSQL.

The commands run in-process (Typer's runner) on a worker thread, because each
runs its own event loop; the test's loop meanwhile holds the runner lock
where a test needs "a server runs agents on the database".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from typer.testing import CliRunner, Result

from agentcast.cli import app
from agentcast.db.pg_runner_lock import RunnerLock
from agentcast.db.postgres import PostgresDatabase
from agentcast.log.postgres import PostgresLog
from tests.log.test_contract import draft
from tests.pg_support import create_database, drop_database


async def db_command(*args: str) -> Result:
    env = {"AGENTCAST_DATABASE_URL": None}
    return await asyncio.to_thread(CliRunner().invoke, app, ["db", *args], env=env)


@pytest_asyncio.fixture
async def bare_url() -> AsyncIterator[str]:
    """A fresh database with no schema, its URL carrying a password (trust auth ignores it)."""
    url = await create_database(migrate=False)
    try:
        yield url.replace("postgresql://postgres@", "postgresql://postgres:pw-s3cret@", 1)
    finally:
        await drop_database(url)


async def test_upgrade_applies_every_migration_once_and_masks_the_password(bare_url: str) -> None:
    first = await db_command("upgrade", "--database-url", bare_url)
    assert first.exit_code == 0, first.output
    assert "applied migrations 1, 2" in first.output
    assert "pw-s3cret" not in first.output
    assert "postgres:***@" in first.output
    again = await db_command("upgrade", "--database-url", bare_url)
    assert again.exit_code == 0, again.output
    assert "the schema is up to date" in again.output


async def test_upgrade_refuses_a_url_that_is_not_postgres() -> None:
    result = await db_command("upgrade", "--database-url", "mysql://u:pw-s3cret@db/x")
    assert result.exit_code != 0
    assert "postgresql://" in result.output
    assert "pw-s3cret" not in result.output


async def test_rotate_epochs_on_postgres_and_its_refusal_while_a_runner_holds_it(
    pg_url: str,
) -> None:
    db = PostgresDatabase(pg_url)
    log = PostgresLog(db)
    await db.open()
    await log.open()
    await log.append([draft("th_1"), draft("th_2")])
    before = {t: (await log.info(t)).epoch for t in ("th_1", "th_2")}
    await log.close()
    await db.close()

    lock = RunnerLock(pg_url)
    await lock.acquire()
    try:
        refused = await db_command("rotate-epochs", "--database-url", pg_url)
    finally:
        await lock.release()
    assert refused.exit_code != 0
    assert "Stop every server first" in refused.output

    done = await db_command("rotate-epochs", "--database-url", pg_url)
    assert done.exit_code == 0, done.output
    assert "2 streams" in done.output
    db = PostgresDatabase(pg_url)
    log = PostgresLog(db)
    await db.open()
    await log.open()
    try:
        after = {t: (await log.info(t)).epoch for t in ("th_1", "th_2")}
    finally:
        await log.close()
        await db.close()
    assert after["th_1"] != before["th_1"]
    assert after["th_2"] != before["th_2"]
