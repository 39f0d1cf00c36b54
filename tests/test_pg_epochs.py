"""A restored PostgreSQL database gives every stream a new epoch (agentcast.db.pg_epochs)."""

from __future__ import annotations

import asyncio

import asyncpg

from agentcast.db.pg_epochs import IDENTITY_KEY, check_identity, cluster_identity


async def _epochs(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT thread_id, epoch FROM streams")
    return {row["thread_id"]: row["epoch"] for row in rows}


async def test_the_cluster_pair_is_stored_once_and_rotates_nothing(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO streams (thread_id, epoch) VALUES ('t1', 'e1'), ('t2', 'e2')"
        )
        assert await check_identity(conn) == (None, 0)
        identity = await cluster_identity(conn)
        assert identity is not None
        stored = await conn.fetchval("SELECT value FROM meta WHERE key = $1", IDENTITY_KEY)
        assert stored == identity
        assert await check_identity(conn) == (None, 0)  # the same cluster: nothing to do
        assert await _epochs(conn) == {"t1": "e1", "t2": "e2"}
    finally:
        await conn.close()


async def test_another_cluster_or_timeline_rotates_every_epoch(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO streams (thread_id, epoch) VALUES ('t1', 'e1'), ('t2', 'e2')"
        )
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, '1234/1')", IDENTITY_KEY
        )  # what a copy restored from another cluster would carry
        reason, rotated = await check_identity(conn)
        assert reason is not None
        assert "restore" in reason
        assert rotated == 2
        epochs = await _epochs(conn)
        assert set(epochs) == {"t1", "t2"}
        assert epochs["t1"] not in {"e1", "e2"}
        assert epochs["t1"] != epochs["t2"]
        assert all(len(e) == 16 for e in epochs.values())
        assert await check_identity(conn) == (None, 0)  # once
    finally:
        await conn.close()


async def test_the_restore_procedure_rotates_whatever_the_pair_says(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO streams (thread_id, epoch) VALUES ('t1', 'e1')")
        await check_identity(conn)
        reason, rotated = await check_identity(conn, rotate=True)
        assert reason is not None
        assert rotated == 1
        assert (await _epochs(conn))["t1"] != "e1"
    finally:
        await conn.close()


async def test_processes_opening_together_rotate_once(pg_url: str) -> None:
    setup = await asyncpg.connect(pg_url)
    try:
        await setup.execute("INSERT INTO streams (thread_id, epoch) VALUES ('t1', 'e1')")
        await setup.execute("INSERT INTO meta (key, value) VALUES ($1, '1234/1')", IDENTITY_KEY)
    finally:
        await setup.close()
    conns = [await asyncpg.connect(pg_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(check_identity(c) for c in conns))
        assert sorted(rotated for _, rotated in results) == [0, 0, 1]
    finally:
        for c in conns:
            await c.close()
