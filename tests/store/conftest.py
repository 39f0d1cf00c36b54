"""The store suites on every backend: memory, SQLite and PostgreSQL.

``backend`` and ``make_engine`` are redefined here so that every store test
taking ``make_engine`` runs unchanged on PostgreSQL too. The engine does not
pick PostgreSQL by itself yet, so its log and store are handed to it: a
:class:`PostgresDatabase` on a fresh database (``pg_url``, dropped after the
test), a :class:`PostgresStore` and a :class:`PostgresLog` projecting into it,
as the SQLite engine wires its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agentcast.agents import AgentRegistry, builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from tests.conftest import EngineFactory


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per store backend."""
    return str(request.param)


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    """A fresh PostgreSQL database for the ``postgres`` backend; ``None`` for the others.

    Sync, so that ``pg_url`` (async) is set up only where it is needed, and
    before the test's event loop runs anything.
    """
    if backend != "postgres":
        return None
    return str(request.getfixturevalue("pg_url"))


@pytest_asyncio.fixture
async def make_engine(
    tmp_path: Path, backend: str, backend_url: str | None
) -> AsyncIterator[EngineFactory]:
    """Build started engines on the test's backend; all are shut down afterwards."""
    engines: list[Engine] = []
    databases: list[Any] = []  # PostgresDatabase, imported only where used (asyncpg)

    async def factory(registry: AgentRegistry | None = None, **overrides: Any) -> Engine:
        settings = EngineSettings(
            data_dir=tmp_path / f"data{len(engines)}",
            # Unused on PostgreSQL: the log and the store are handed to the engine.
            log_backend="memory" if backend == "postgres" else backend,  # type: ignore[arg-type]
            health_interval_s=3600,
            recovery_base_s=0.01,
            recovery_max_s=0.05,
            text_coalesce_ms=5,
        ).with_(**overrides)
        registry = registry if registry is not None else builtin_registry()
        if backend_url is None:
            engine = Engine(settings, registry)
        else:
            from agentcast.db.postgres import PostgresDatabase
            from agentcast.log.postgres import PostgresLog
            from agentcast.store.postgres import PostgresStore

            db = PostgresDatabase(backend_url)
            await db.open()
            databases.append(db)
            store = PostgresStore(db)
            log = PostgresLog(db, projector=store.project)
            engine = Engine(settings, registry, log=log, store=store)
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.shutdown(grace_s=0)
    for db in databases:
        await db.close()
