"""The engine: log, store, bridge and runner wired together, started and stopped in order.

``Engine`` is what a server (or a test, or an embedding application) holds.
Start-up order: database → (PostgreSQL: the runner lock,
:mod:`agentcast.db.pg_runner_lock`) → store → bridge (opens the log, probes it)
→ runner (recovers interrupted runs) → the retention sweeper, when a retention
bound is set (:mod:`agentcast.retention`). The database is the data
directory's SQLite file, or PostgreSQL when ``database_url`` is set.
Shutdown is the reverse, per docs/architecture.md invariant 9: the runner
stops accepting, lets runs finish within the grace period and cancels the
rest; the bridge appends their terminal events; then the log and the
database close.

The engine serving in this process — the one a gateway's lifespan started —
is available through :func:`get_engine` / :func:`get_bridge` for code that
cannot be handed one, but nothing inside agentcast depends on it: every
component takes its collaborators explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from .agents import AgentRegistry, builtin_registry
from .bridge import Bridge
from .config import EngineSettings
from .db.sqlite import SqliteDatabase
from .errors import Unavailable
from .log.base import EventLog
from .log.memory import MemoryLog
from .log.sqlite import SqliteLog
from .metrics import EngineMetrics
from .retention import RetentionPolicy, RetentionSweeper
from .runner import Runner
from .store.base import Store
from .store.memory import MemoryStore
from .store.sqlite import SqliteStore

if TYPE_CHECKING:
    from .db.pg_runner_lock import RunnerLock
    from .db.postgres import PostgresDatabase

__all__ = ["Engine", "get_bridge", "get_engine", "serving"]


class Engine:
    """Everything below the network, for one process.

    Args:
        settings: Engine settings (``EngineSettings.from_env()`` by default).
        registry: The agents to serve (the built-in ones by default).
    """

    def __init__(
        self,
        settings: EngineSettings | None = None,
        registry: AgentRegistry | None = None,
        *,
        log: EventLog | None = None,
        store: Store | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.settings = settings or EngineSettings.from_env()
        self.registry = registry if registry is not None else builtin_registry()
        self.metrics = metrics or EngineMetrics()
        self.db: SqliteDatabase | PostgresDatabase | None = None
        #: PostgreSQL only: this process is the database's one runner (agentcast.db.pg_runner_lock).
        self.runner_lock: RunnerLock | None = None
        if log is not None and store is not None:
            self.log, self.store = log, store
        elif self.settings.database_url is not None:
            self.log, self.store = self._postgres(self.settings.database_url)
        elif self.settings.log_backend == "memory":
            memory_store = MemoryStore()
            self.store = memory_store
            self.log = MemoryLog(projector=memory_store.project)
        else:
            self.db = SqliteDatabase(
                self.settings.data_dir, synchronous=self.settings.sqlite_synchronous
            )
            sqlite_store = SqliteStore(self.db)
            self.store = sqlite_store
            self.log = SqliteLog(
                self.db,
                projector=sqlite_store.project,
                tail_events_per_thread=self.settings.tail_events_per_thread,
            )
        self.bridge = Bridge(self.log, self.settings, metrics=self.metrics)
        self.runner = Runner(self.bridge, self.store, self.registry, self.settings)
        policy = RetentionPolicy.from_settings(self.settings)
        #: The background trimmer (docs/event-log.md, "Retention"); ``None``
        #: unless a retention bound is set: without one nothing is ever trimmed.
        self.retention: RetentionSweeper | None = (
            RetentionSweeper(self.log, self.store, policy, metrics=self.metrics)
            if policy.bounded
            else None
        )
        self._lock_keeper: asyncio.Task[None] | None = None
        self._started = False
        self._lock = asyncio.Lock()

    def _postgres(self, url: str) -> tuple[EventLog, Store]:
        """The log and the store on PostgreSQL (asyncpg is imported only here)."""
        try:
            from .db.pg_runner_lock import RunnerLock
            from .db.postgres import PostgresDatabase
            from .log.postgres import PostgresLog
            from .store.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - the extra is in dev
            raise ImportError(
                "AGENTCAST_DATABASE_URL names PostgreSQL, which needs asyncpg: "
                "pip install 'agentcast[postgres]'"
            ) from exc
        from .dsn import is_postgres_url, mask_dsn
        from .settings import InvalidSetting

        if not is_postgres_url(url):
            raise InvalidSetting(f"database_url must be a postgresql:// URL, not {mask_dsn(url)!r}")
        settings = self.settings
        self.db = PostgresDatabase(
            url,
            pool_max_size=settings.pg_pool_max_size,
            connect_timeout_s=settings.pg_connect_timeout_s,
        )
        self.runner_lock = RunnerLock(url, connect_timeout_s=settings.pg_connect_timeout_s)
        store = PostgresStore(self.db)
        log = PostgresLog(
            self.db,
            projector=store.project,
            tail_events_per_thread=settings.tail_events_per_thread,
            head_check_interval_s=settings.pg_head_check_interval_s,
        )
        return log, store

    async def start(self) -> None:
        """Open storage, start the bridge, recover runs. Idempotent."""
        async with self._lock:
            if self._started:
                return
            if self.db is not None:
                await self.db.open()
            try:
                if self.runner_lock is not None:
                    # Before recovery: it ends the runs another live runner would own.
                    await self.runner_lock.acquire()
                await self.store.open()
                await self.bridge.ensure_integration()
                await self.runner.start()
            except BaseException:
                if self.runner_lock is not None:
                    await self.runner_lock.release()
                if self.db is not None and self.db.is_open:
                    await self.db.close()
                raise
            if self.runner_lock is not None:
                self._lock_keeper = asyncio.create_task(
                    self.runner_lock.keep(), name="agentcast-runner-lock"
                )
                self.bridge.watch(self._lock_keeper, "runner-lock")
            if self.retention is not None:
                # Watched: should the sweeper's task die, the bridge turns DEGRADED, loudly.
                self.bridge.watch(self.retention.start(), "retention")
            self._started = True

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Finish or cancel runs, append their terminal events, close everything."""
        async with self._lock:
            if not self._started:
                if self.db is not None and self.db.is_open:
                    await self.db.close()
                return
            self._started = False
            # Each step runs whatever the one before it raised (the stack closes
            # last-in first-out): a failure never leaves the log or the data
            # directory held.
            async with contextlib.AsyncExitStack() as closing:
                if self.db is not None:
                    closing.push_async_callback(self.db.close)
                # After the last run: what the agents hold (model clients' connections).
                closing.push_async_callback(self.registry.aclose)
                if self.runner_lock is not None:
                    # After the runner has ended its runs and their events are stored.
                    closing.push_async_callback(self.runner_lock.release)
                    closing.push_async_callback(self._stop_lock_keeper)
                closing.push_async_callback(self.store.close)
                closing.push_async_callback(self.bridge.close)
                if self.retention is not None:
                    # First: no trim may race the last appends or the log's close.
                    await self.retention.stop()
                await self.runner.shutdown(grace_s)

    async def _stop_lock_keeper(self) -> None:
        keeper, self._lock_keeper = self._lock_keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


#: The engines serving in this process, most recently started last. Process-wide
#: on purpose: it is what :func:`get_engine` answers for code that cannot be
#: handed an engine. It holds no per-run state.
_serving: list[Engine] = []


@contextlib.contextmanager
def serving(engine: Engine) -> Iterator[Engine]:
    """Make ``engine`` what :func:`get_engine` returns for the ``with`` block.

    The gateway's lifespan (``agentcast serve``, ``create_app``, a host app's
    ``agentcast_lifespan``) registers the engine it started this way.
    """
    _serving.append(engine)
    try:
        yield engine
    finally:
        _serving.remove(engine)


def get_engine() -> Engine:
    """The engine serving in this process (the most recently started one).

    For code that cannot be handed the engine (a tool deep inside an agent,
    a host app's route). It never builds an engine of its own: a second
    engine on the same data directory could not even start.

    Raises:
        Unavailable: no agentcast app has started in this process (or every
            one has stopped).
    """
    if not _serving:
        raise Unavailable("no agentcast engine is serving in this process")
    return _serving[-1]


def get_bridge() -> Bridge:
    """The serving engine's bridge (see :func:`get_engine`)."""
    return get_engine().bridge
