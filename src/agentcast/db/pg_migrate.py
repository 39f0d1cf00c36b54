"""PostgreSQL schema migrations: numbered SQL files, applied in order, once.

The SQLite database migrates itself when it opens (one process owns it). A
PostgreSQL database is shared by several processes and usually managed by
an operator, so the schema is upgraded explicitly — ``agentcast db upgrade``
calls :func:`apply_migrations` — and :class:`~agentcast.db.postgres.PostgresDatabase`
only checks the version when it opens (:func:`check_schema`): a server
never changes a shared schema behind the other servers' backs.

Migrations are the files ``migrations/postgres/NNNN_name.sql`` shipped in
the package. Each missing one runs in its own transaction together with its
row in ``agentcast_schema``, under a transaction-scoped advisory lock, so
two upgrades started at once apply every file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import asyncpg

from ..errors import InternalError

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "SchemaOutdated",
    "apply_migrations",
    "check_schema",
    "current_version",
    "latest_version",
    "migrations",
]

#: The advisory lock key that serialises upgrades ("agentcas" in ASCII, as a bigint).
MIGRATION_LOCK_KEY: Final = 0x6167656E74636173
_PACKAGE: Final = "agentcast.db.migrations.postgres"
_NAME: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS agentcast_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaOutdated(InternalError):
    """The database's schema is not the one this code was written for.

    Older (or missing): an operator runs ``agentcast db upgrade``. Newer: this
    code is older than the database and must not write to it.
    """


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files(_PACKAGE).iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise InternalError(f"PostgreSQL migrations are not numbered 1..n: {versions}")
    return found


def latest_version() -> int:
    """The schema version this code expects."""
    found = migrations()
    return found[-1].version if found else 0


async def current_version(conn: asyncpg.Connection) -> int:
    """The database's schema version (0 when no migration ever ran)."""
    exists = await conn.fetchval("SELECT to_regclass('agentcast_schema') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM agentcast_schema")
    return int(version)


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply every missing migration in order; return the versions applied.

    Each file runs in one transaction with its version row, after taking the
    advisory lock, and re-reads the version under it: a concurrent upgrade
    that got there first leaves nothing to do.

    Raises:
        SchemaOutdated: the database is newer than this code.
    """
    applied: list[int] = []
    latest = latest_version()
    for migration in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_VERSION_TABLE)
            version = await current_version(conn)
            if version > latest:
                raise SchemaOutdated(
                    f"the database schema is version {version}, newer than this agentcast "
                    f"({latest}); upgrade agentcast"
                )
            if migration.version <= version:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO agentcast_schema (version) VALUES ($1)", migration.version
            )
            applied.append(migration.version)
    return applied


async def check_schema(conn: asyncpg.Connection, where: str) -> int:
    """Refuse a database whose schema is not this code's; return its version.

    ``where`` names the database (its masked URL) in the message.

    Raises:
        SchemaOutdated: older or missing (run ``agentcast db upgrade``), or newer.
    """
    version = await current_version(conn)
    latest = latest_version()
    if version < latest:
        raise SchemaOutdated(
            f"the database {where} has schema version {version}, this agentcast needs "
            f"{latest}: run `agentcast db upgrade`"
        )
    if version > latest:
        raise SchemaOutdated(
            f"the database {where} has schema version {version}, newer than this "
            f"agentcast ({latest}); upgrade agentcast"
        )
    return version
