"""One process runs agents per PostgreSQL database: a session advisory lock.

On start, the runner recovers the runs the store says are still queued or
running: it ends them (``interrupted``) or starts them again. That is right
after a crash and wrong when another live process is running them — its
runs would be ended under it. With SQLite the data directory's lock file
keeps a second server out; a shared PostgreSQL database has no such file,
so a process that runs agents holds a *session* advisory lock on a
connection of its own (not from the pool, so no other work can release it)
for as long as it runs them, and a second one refuses to start with
:class:`RunnerLocked`.

A session lock dies with its connection. If that connection is lost while
the process runs, :meth:`RunnerLock.keep` takes the lock again as soon as
the server answers; should another process have taken it meanwhile, ``keep``
raises :class:`RunnerLockLost`, which the bridge (watching the task) turns
into DEGRADED, loudly: two processes would now be running agents on one
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import asyncpg

from ..dsn import mask_dsn
from ..errors import RunnerLocked, RunnerLockLost

__all__ = ["RUNNER_LOCK_KEY", "RunnerLock", "RunnerLockLost", "RunnerLocked"]

logger = logging.getLogger(__name__)

#: The advisory lock key of the runner ("agentrun" in ASCII, as a bigint).
RUNNER_LOCK_KEY: Final = 0x6167656E7472756E
_RETRY_MIN_S: Final = 0.05
_RETRY_MAX_S: Final = 2.0
#: What trying to take the lock again raises while the server is away.
_UNREACHABLE: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class RunnerLock:
    """The session advisory lock that makes this process the database's one runner.

    Args:
        url: The database URL (shown only masked).
        connect_timeout_s: Each connection attempt gives up after this long.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        self._url = url
        self._timeout = connect_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lost: asyncio.Event = asyncio.Event()

    @property
    def held(self) -> bool:
        """Whether this process holds the lock right now (its connection is up)."""
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    async def acquire(self) -> None:
        """Take the lock, or refuse because another process holds it.

        Raises:
            RunnerLocked: another process runs agents on this database.
            OSError, asyncpg.PostgresError: the database cannot be reached.
        """
        if not await self._try():
            raise RunnerLocked(
                f"another agentcast server already runs agents on {mask_dsn(self._url)}: "
                "stop it first (one process per database runs agents)"
            )

    async def keep(self) -> None:
        """Hold the lock for ever: take it again whenever its connection is lost.

        Meant to run as a task the bridge watches. Returns never; cancelled on
        shutdown.

        Raises:
            RunnerLockLost: the connection was lost and another process took the lock.
        """
        delay = _RETRY_MIN_S
        while True:
            await self._lost.wait()
            logger.error("the runner lock's connection to %s was lost", mask_dsn(self._url))
            while True:
                try:
                    taken = await self._try()
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    TimeoutError,
                ) as exc:
                    logger.warning(
                        "runner lock: %s unreachable (%r); retrying", mask_dsn(self._url), exc
                    )
                    await asyncio.sleep(delay)
                    delay = min(_RETRY_MAX_S, delay * 2)
                    continue
                if not taken:
                    raise RunnerLockLost(
                        f"the runner lock on {mask_dsn(self._url)} was lost and another "
                        "process holds it now: two processes may be running agents"
                    )
                logger.warning("runner lock on %s taken again", mask_dsn(self._url))
                delay = _RETRY_MIN_S
                break

    async def release(self) -> None:
        """Give the lock up (closing its connection releases it)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", RUNNER_LOCK_KEY)
            with contextlib.suppress(Exception):
                await conn.close(timeout=self._timeout)

    async def _try(self) -> bool:
        conn = await asyncpg.connect(self._url, timeout=self._timeout)
        try:
            taken = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUNNER_LOCK_KEY))
        except BaseException:
            await conn.close()
            raise
        if not taken:
            await conn.close()
            return False
        self._lost.clear()
        conn.add_termination_listener(self._on_terminated)
        old, self._conn = self._conn, conn
        if old is not None:
            old.terminate()
        return True

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lost.set()
