"""PostgreSQL for the tests: a fresh, migrated database per test, dropped afterwards.

``AGENTCAST_TEST_PG_URL`` names a server and a database the tests may connect
to in order to create others (default: the local ``test`` database as
``postgres``). When the server cannot be reached the tests that need it are
skipped — or fail, with ``AGENTCAST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

from agentcast.db.pg_migrate import apply_migrations

__all__ = [
    "PG_URL",
    "create_database",
    "drop_database",
    "drop_shared_database",
    "fresh_database",
    "pg_url",
    "with_database",
]

PG_URL: Final = os.environ.get("AGENTCAST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_CONNECT_TIMEOUT_S: Final = 5.0


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin() -> asyncpg.Connection:
    from tests.conftest import skip_or_fail  # here: conftest imports this module

    try:
        return await asyncpg.connect(PG_URL, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        skip_or_fail(f"PostgreSQL is unreachable at AGENTCAST_TEST_PG_URL: {exc!r}")
        raise  # unreachable: skip_or_fail raises


async def create_database(*, migrate: bool = True) -> str:
    """Create a database ``agentcast_t_<random>`` (migrated unless told not to); its URL."""
    name = f"agentcast_t_{secrets.token_hex(6)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(PG_URL, name)
    if migrate:
        conn = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT_S)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
    return url


async def drop_database(url: str) -> None:
    """Drop the database of ``url``, disconnecting whoever is still connected."""
    name = urlsplit(url).path.lstrip("/")
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


#: The test session's migrated database, emptied for each test (see :func:`fresh_database`).
_shared: list[str] = []


async def fresh_database() -> str:
    """The session's migrated database, emptied: as good as a new one, 50 times faster.

    Creating and migrating a database costs about a second and dropping it
    half of one; hundreds of Postgres tests would add minutes. So the first
    call creates one, and each later call empties it instead: every other
    connection to it is ended (a test is over, so whatever is still connected
    leaked), every table but the schema version is truncated, sequences start
    over and ``meta`` holds a new ``db_id`` alone, as after the migrations.
    A test that needs an unmigrated or a second database uses
    :func:`create_database`. :func:`drop_shared_database` drops it at the end.
    """
    if not _shared:
        _shared.append(await create_database())
        return _shared[0]
    url = _shared[0]
    conn = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT_S)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'agentcast_schema'"
        )
        await conn.execute(f"TRUNCATE {', '.join(t['name'] for t in tables)} RESTART IDENTITY")
        sequences = await conn.fetch(
            "SELECT quote_ident(sequencename) AS name FROM pg_sequences WHERE schemaname = 'public'"
        )
        for sequence in sequences:
            await conn.execute(f"ALTER SEQUENCE {sequence['name']} RESTART")
        await conn.execute(
            "INSERT INTO meta (key, value) "
            "VALUES ('db_id', md5(random()::text || clock_timestamp()::text))"
        )
    finally:
        await conn.close()
    return url


async def drop_shared_database() -> None:
    """Drop the session's database, if one was made (``pytest_sessionfinish``)."""
    while _shared:
        await drop_database(_shared.pop())


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    """A migrated database holding nothing, for this test alone (:func:`fresh_database`)."""
    yield await fresh_database()
