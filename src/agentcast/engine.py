"""The engine: log, store, bridge and runner wired together, started and stopped in order.

``Engine`` is what a server (or a test, or an embedding application) holds.
Start-up order: database → store → bridge (opens the log, probes it) → runner
(recovers interrupted runs) → the retention sweeper, when a retention bound is
set (:mod:`agentcast.retention`). Shutdown is the reverse, per docs/architecture.md invariant
9: the runner stops accepting, lets runs finish within the grace period and
cancels the rest; the bridge appends their terminal events; then the log and
the database close.

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
        self.db: SqliteDatabase | None = None
        if log is not None and store is not None:
            self.log, self.store = log, store
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
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open storage, start the bridge, recover runs. Idempotent."""
        async with self._lock:
            if self._started:
                return
            if self.db is not None:
                await self.db.open()
            await self.store.open()
            await self.bridge.ensure_integration()
            await self.runner.start()
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
                closing.push_async_callback(self.store.close)
                closing.push_async_callback(self.bridge.close)
                if self.retention is not None:
                    # First: no trim may race the last appends or the log's close.
                    await self.retention.stop()
                await self.runner.shutdown(grace_s)

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
