"""Other processes' commits: ``LISTEN agentcast_events`` plus a periodic head check.

Several servers may share one PostgreSQL database. A process learns of its
own commits from its writer's ``on_commit`` callbacks; for the others'
commits, :class:`~agentcast.log.postgres.PostgresLog` sends one
``pg_notify('agentcast_events', payload)`` per group commit — the payload is
a JSON list of ``[thread_id, head_seq]`` pairs, or ``*`` ("check every
thread") when the list would not fit in PostgreSQL's 8,000-byte payload —
and every process listens here.

Notifications are a hint, never the data (bodies are read from ``events``)
and never the only path: a notification can be lost while the listening
connection is down, so every ``interval_s`` the log also compares the heads
of the threads it follows with the database (one query for all), and after
a reconnect it checks every followed thread at once. A lost notification
thus delays delivery by at most one interval; nothing is skipped, because
what is read is always the range after what this process already holds.

The connection is a dedicated one (not from the pool, never in a
transaction): a pooled connection would stop listening when released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

__all__ = ["ALL_THREADS", "CHANNEL", "MAX_PAYLOAD_BYTES", "NotificationListener", "payload_for"]

logger = logging.getLogger(__name__)

#: The channel every PostgresLog notifies and listens on.
CHANNEL: Final = "agentcast_events"
#: A payload over this many bytes is replaced by :data:`ALL_THREADS` (the server's bound is 8,000).
MAX_PAYLOAD_BYTES: Final = 7900
#: The payload meaning "some threads changed: check every thread you follow".
ALL_THREADS: Final = "*"
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0


def payload_for(heads: dict[str, int]) -> str:
    """The notification payload for the new ``heads`` of one group commit."""
    payload = json.dumps(
        [[thread_id, seq] for thread_id, seq in heads.items()], separators=(",", ":")
    )
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        return ALL_THREADS
    return payload


def parse_payload(payload: str) -> dict[str, int] | None:
    """``{thread_id: head}`` of a payload, or ``None`` for "check every thread" (or garbage)."""
    if payload == ALL_THREADS:
        return None
    try:
        pairs: Any = json.loads(payload)
        return {str(thread_id): int(seq) for thread_id, seq in pairs}
    except (ValueError, TypeError):
        logger.warning("unreadable %s payload %r: checking every thread", CHANNEL, payload[:100])
        return None


class NotificationListener:
    """Keeps ``LISTEN agentcast_events`` on its own connection, reconnecting when it drops.

    Args:
        connect: Opens a new dedicated connection (bounded in time).
        where: The database, as shown in logs (a masked URL).
        interval_s: Seconds between two calls of ``on_tick`` (the head check).
        on_notify: Called with each payload, on the loop (must not block).
        on_connected: Called after every (re)connection, before the first
            notification: whatever was sent while nobody listened is lost.
        on_tick: Awaited every ``interval_s`` (its errors are logged).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        where: str,
        interval_s: float,
        on_notify: Callable[[str], None],
        on_connected: Callable[[], None],
        on_tick: Callable[[], Awaitable[None]],
    ) -> None:
        self._connect_fn = connect
        self._where = where
        self._interval_s = interval_s
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._on_tick = on_tick
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        #: Times the connection was (re)established.
        self.connects = 0

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up now."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def server_pid(self) -> int | None:
        """The server process of the listening connection (for tests)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    def start(self) -> None:
        """Start listening in the background (connection failures are retried there)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._main(), name="agentcast-postgres-listener"
            )

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def _main(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                await self._connect()
                backoff = _BACKOFF_MIN_S
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "listening on %s at %s failed: %r; reconnecting",
                    CHANNEL,
                    self._where,
                    exc,
                )
            await self._drop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _connect(self) -> None:
        self._lost = asyncio.Event()
        conn = await self._connect_fn()
        self._conn = conn
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(CHANNEL, self._notified)
        self.connects += 1
        self._on_connected()

    async def _listen(self) -> None:
        """Run the head check every interval until the connection is lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._interval_s)
            conn = self._conn
            if self._lost.is_set() or conn is None or conn.is_closed():
                raise ConnectionError("the listening connection was lost")
            try:
                await self._on_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the head check of followed threads failed")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 5.0)
        except Exception:
            conn.terminate()

    def _terminated(self, conn: asyncpg.Connection) -> None:
        self._lost.set()

    def _notified(self, conn: asyncpg.Connection, pid: int, channel: str, payload: str) -> None:
        try:
            self._on_notify(payload)
        except Exception:
            logger.exception("handling a %s notification failed", CHANNEL)
