"""The gateway object: what every endpoint of one app shares.

One :class:`Gateway` per app instance holds the engine, the settings, the
authenticator, the open connections and their count per user
(``max_connections_per_user``, :mod:`.user_connections`). Endpoints are bound to it when the
app is built (never looked up in module globals), so two apps — or a test and
a server — can live side by side in one process.

Shutdown order (docs/architecture.md invariant 9): stop accepting runs, let running
runs finish within the grace period, cancel the rest (each gets its terminal
event), let connections drain those events, close them with 1001, then close
the engine.

Shutdown is bounded whatever fails (:meth:`Gateway.shutdown_budget`): every
phase has a deadline, connections are drained and closed concurrently under
one deadline, a connection whose drain or close fails or hangs is logged and
left behind without holding up the others, and the engine is shut down in a
``finally``. An orchestrator's kill timeout can be set from that bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..engine import Engine
from ..errors import CloseCode
from .metrics import GatewayMetrics
from .settings import GatewaySettings
from .user_connections import UserConnections

if TYPE_CHECKING:
    from .auth import Authenticator

__all__ = ["ENGINE_CLOSE_S", "RUNS_END_S", "Connection", "Gateway"]

logger = logging.getLogger(__name__)

#: After the grace period, how long the runs cancelled at shutdown get to write
#: their terminal events before shutdown moves on to the connections.
RUNS_END_S: Final = 5.0
#: The engine's own close (buffered events appended, log and database closed);
#: a last resort: it takes milliseconds unless the disk hangs.
ENGINE_CLOSE_S: Final = 10.0
#: How long a task cancelled at a deadline gets to unwind before it is left behind.
_UNWIND_S: Final = 0.5


class Connection(Protocol):
    """An open WebSocket or SSE connection, as shutdown sees it."""

    user_id: str

    async def drain(self, timeout: float) -> None:
        """Wait until every event already in the log for its subscriptions was sent."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with a close code (SSE: end the response)."""
        ...


@dataclass(eq=False)
class Gateway:
    """Everything one app instance shares."""

    engine: Engine
    settings: GatewaySettings
    auth: Authenticator
    connections: set[Connection] = field(default_factory=set)
    started: bool = False
    closing: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Request and connection metrics, exported from the engine's registry.
    metrics: GatewayMetrics = field(init=False)
    #: Open WebSocket and SSE connections per user (``max_connections_per_user``).
    user_connections: UserConnections = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = GatewayMetrics(self.connections, self.engine.metrics.registry)
        self.user_connections = UserConnections(self.settings.max_connections_per_user)

    async def startup(self) -> None:
        """Start the engine (idempotent; the lifespan hook calls this)."""
        async with self._lock:
            if self.started:
                return
            await self.engine.start()
            self.started = True

    def shutdown_budget(self, grace_s: float | None = None) -> float:
        """The most :meth:`shutdown` can take, in seconds, whatever fails.

        The grace period, then :data:`RUNS_END_S` for the cancelled runs'
        terminal events, ``shutdown_drain_s`` + ``shutdown_close_s`` for the
        connections, ``shutdown_close_s`` for the shutdown hooks and
        :data:`ENGINE_CLOSE_S` for the engine (plus a fraction of a second per
        phase for cancelled work to unwind).
        """
        s = self.settings
        grace = s.shutdown_grace_s if grace_s is None else grace_s
        phases = grace + RUNS_END_S + s.shutdown_drain_s + 2 * s.shutdown_close_s
        return phases + ENGINE_CLOSE_S + 4 * _UNWIND_S

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Finish or cancel runs, deliver their terminal events, close connections 1001.

        Bounded by :meth:`shutdown_budget`; the engine is shut down even when a
        phase fails or is cancelled.
        """
        async with self._lock:
            if not self.started or self.closing:
                return
            self.closing = True
            s = self.settings
            grace = s.shutdown_grace_s if grace_s is None else grace_s
            logger.info(
                "shutting down: runs get %.1fs, connections %.1fs (at most %.1fs in all)",
                grace,
                s.shutdown_drain_s + s.shutdown_close_s,
                self.shutdown_budget(grace),
            )
            try:
                await _bounded(
                    "finishing runs", self.engine.runner.shutdown(grace), grace + RUNS_END_S
                )
                await self._close_connections(s.shutdown_drain_s, s.shutdown_close_s)
                await _bounded("shutdown hooks", self._run_hooks(), s.shutdown_close_s)
            finally:
                await _bounded(
                    "closing the engine", self.engine.shutdown(grace_s=0), ENGINE_CLOSE_S
                )
                self.started = False

    # Private methods

    async def _close_connections(self, drain_s: float, close_s: float) -> None:
        """Drain then close every connection, all at once, under one deadline.

        Each connection is closed (1001) as soon as it is drained or its
        ``drain_s`` ran out, independently of the others; a drain or close
        that fails is logged and the others go on. What is not closed after
        ``drain_s + close_s`` is cancelled and left to the server to drop.
        """
        connections = list(self.connections)
        if not connections:
            return
        loop = asyncio.get_running_loop()
        drained_by = loop.time() + drain_s

        async def finish(conn: Connection) -> None:
            try:
                async with asyncio.timeout_at(drained_by):
                    await conn.drain(timeout=drain_s)
            except TimeoutError:
                logger.warning("connection %s not drained within %.1fs", _name(conn), drain_s)
            except Exception:
                logger.exception("draining connection %s at shutdown failed", _name(conn))
            try:
                await conn.close(CloseCode.GOING_AWAY, "server shutting down")
            except Exception:
                logger.exception("closing connection %s at shutdown failed", _name(conn))

        tasks = [asyncio.create_task(finish(c), name=f"shutdown:{_name(c)}") for c in connections]
        try:
            _, pending = await asyncio.wait(tasks, timeout=drain_s + close_s)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        if pending:
            logger.error(
                "%d of %d connections not closed within %.1fs; leaving them to the server",
                len(pending),
                len(tasks),
                drain_s + close_s,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_UNWIND_S)

    async def _run_hooks(self) -> None:
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")


def _name(conn: Connection) -> str:
    return str(getattr(conn, "connection_id", None) or f"{type(conn).__name__}@{id(conn):x}")


async def _bounded(what: str, work: Coroutine[Any, Any, None], timeout: float) -> None:
    """Run one shutdown phase with a deadline; log (never raise) a failure or an overrun.

    The phase runs in a task of its own, so that even work that ignores
    cancellation cannot hold shutdown past ``timeout`` plus a moment to unwind.
    """
    started = time.monotonic()
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        logger.error("shutdown: %s took more than %.1fs; moving on", what, timeout)
        task.cancel()
        await asyncio.wait([task], timeout=_UNWIND_S)
        return
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("shutdown: %s failed", what, exc_info=exc)
        return
    logger.debug("shutdown: %s done in %.2fs", what, time.monotonic() - started)
