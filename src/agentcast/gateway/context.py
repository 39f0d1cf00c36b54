"""The gateway object: what every endpoint of one app shares.

One :class:`Gateway` per app instance holds the engine, the settings, the
authenticator and the open connections. Endpoints are bound to it when the
app is built (never looked up in module globals), so two apps — or a test and
a server — can live side by side in one process.

Shutdown order (DESIGN.md invariant 9): stop accepting runs, let running
runs finish within the grace period, cancel the rest (each gets its terminal
event), let connections drain those events, close them with 1001, then close
the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..engine import Engine
from .metrics import GatewayMetrics
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .auth import Authenticator

__all__ = ["Connection", "Gateway"]

logger = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        self.metrics = GatewayMetrics(self.connections, self.engine.metrics.registry)

    async def startup(self) -> None:
        """Start the engine (idempotent; the lifespan hook calls this)."""
        async with self._lock:
            if self.started:
                return
            await self.engine.start()
            self.started = True

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Finish or cancel runs, deliver their terminal events, close connections 1001."""
        async with self._lock:
            if not self.started or self.closing:
                return
            self.closing = True
            grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
            await self.engine.runner.shutdown(grace)
            connections = list(self.connections)
            drained = await asyncio.gather(
                *(c.drain(timeout=5.0) for c in connections), return_exceptions=True
            )
            for outcome in drained:
                if isinstance(outcome, BaseException):
                    logger.error("draining a connection at shutdown failed", exc_info=outcome)
            for c in connections:
                try:
                    await c.close(1001, "server shutting down")
                except Exception:
                    logger.exception("closing a connection at shutdown failed")
            for hook in self.on_shutdown:
                try:
                    await hook()
                except Exception:
                    logger.exception("shutdown hook failed")
            await self.engine.shutdown(grace_s=0)
            self.started = False
