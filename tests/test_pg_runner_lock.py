"""One process runs agents per PostgreSQL database (agentcast.db.pg_runner_lock)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from agentcast.config import EngineSettings
from agentcast.db.pg_runner_lock import RunnerLock, RunnerLocked, RunnerLockLost
from agentcast.engine import Engine
from agentcast.lifecycle import BridgeState
from tests.utils import seconds, wait_until


def _password_url(url: str) -> str:
    """``url`` with a password the server ignores (trust auth) and no message may show."""
    return url.replace("postgresql://postgres@", "postgresql://postgres:pw-s3cret@", 1)


async def _terminate(url: str, lock: RunnerLock) -> None:
    conn = lock._conn
    assert conn is not None
    pid = conn.get_server_pid()
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_second_runner_is_refused_until_the_first_lets_go(pg_url: str) -> None:
    url = _password_url(pg_url)
    first, second = RunnerLock(url), RunnerLock(url)
    await first.acquire()
    try:
        with pytest.raises(RunnerLocked) as info:
            await second.acquire()
        assert "already runs agents" in info.value.message
        assert "pw-s3cret" not in info.value.message
        assert "postgres:***@" in info.value.message
        assert first.held
        assert not second.held
    finally:
        await first.release()
    await second.acquire()
    assert second.held
    await second.release()


async def test_a_lost_lock_connection_takes_the_lock_again(pg_url: str) -> None:
    lock = RunnerLock(pg_url)
    await lock.acquire()
    keeper = asyncio.create_task(lock.keep())
    try:
        await _terminate(pg_url, lock)
        await wait_until(lambda: not lock.held, within=seconds(2.0))
        await wait_until(lambda: lock.held, within=seconds(5.0))
        with pytest.raises(RunnerLocked):
            await RunnerLock(pg_url).acquire()
        assert not keeper.done()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await lock.release()


async def test_a_lock_another_process_took_meanwhile_is_a_loud_failure(pg_url: str) -> None:
    lock, other = RunnerLock(pg_url), RunnerLock(pg_url)
    await lock.acquire()
    await _terminate(pg_url, lock)
    await wait_until(lambda: not lock.held, within=seconds(2.0))
    await other.acquire()
    try:
        with pytest.raises(RunnerLockLost, match="another"):
            await asyncio.wait_for(lock.keep(), seconds(5.0))
    finally:
        await other.release()
        await lock.release()


async def test_a_second_engine_on_one_database_refuses_to_start(pg_url: str) -> None:
    settings = EngineSettings(database_url=pg_url, shutdown_grace_s=0)
    first = Engine(settings)
    await first.start()
    try:
        assert first.bridge.state is BridgeState.ACTIVE
        second = Engine(settings)
        with pytest.raises(RunnerLocked):
            await second.start()
        assert second.db is not None
        assert not second.db.is_open  # nothing of the refused engine stays open
    finally:
        await first.shutdown()
    third = Engine(settings)
    await third.start()  # the lock was released at shutdown
    await third.shutdown()
