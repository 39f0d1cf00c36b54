"""Single-writer SQLite access, shared by the log and the store.

One process owns a data directory (docs/architecture.md invariant 10): :meth:`open`
takes an exclusive ``flock`` on ``<data_dir>/agentcast.lock`` and keeps it
until :meth:`close`. Inside the process every write goes through one writer
thread and one connection, with group commit (:mod:`agentcast.db.writer`);
reads go to a pool of read-only connections, each on its own thread.

This module is the database's life: opening (lock, writer, session, readers,
checkpoints, in that order), the calls the log and the store make, and a
shutdown that stops whatever was started, in dependency order, and releases
the lock last. Checkpoints run on their own thread and connection
(``wal_autocheckpoint`` is off), so the commit path never pays for copying
pages; the writer starts the WAL over when they ask (see
:mod:`agentcast.db.writer`).

What :meth:`open` checks before anything is written — the previous session
in ``synchronous=NORMAL`` mode that did not close cleanly, a restored or
replaced database — and why every epoch is then rotated is in
:mod:`agentcast.db.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from ..errors import InternalError, LogUnavailable
from .barrier import CommitBarrier
from .lock import LOCK_FILENAME, DataDirLock
from .session import Session, migrate
from .writer import (
    MAX_GROUP_OPS,
    WAL_RESTART_FRAMES,
    GroupWriter,
    WriteOp,
    WriteOutcomeUnknown,
    WriteStats,
)

__all__ = [
    "LOCK_FILENAME",
    "MAX_GROUP_OPS",
    "WAL_RESTART_FRAMES",
    "WAL_SIZE_LIMIT",
    "SqliteDatabase",
    "WriteOutcomeUnknown",
    "WriteStats",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]

#: The WAL file is truncated back to this many bytes once it was started over.
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_BUSY_TIMEOUT_S: Final = 5.0


class SqliteDatabase(GroupWriter):
    """The data directory's SQLite database: one writer thread, a reader pool.

    Args:
        data_dir: Directory holding the database and the lock file (created).
        synchronous: ``"FULL"`` (default; every commit is fsynced) or
            ``"NORMAL"`` (faster; a power loss may lose the last commits, see
            :mod:`agentcast.db.session`).
        readers: Number of read-only connections, each on its own thread.
        checkpoint_interval: Seconds between passive WAL checkpoints.
        wal_restart_frames: WAL frames after which the WAL is started over.
        filename: Database file name inside ``data_dir``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        checkpoint_interval: float = 1.0,
        wal_restart_frames: int = WAL_RESTART_FRAMES,
        filename: str = "agentcast.db",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if readers < 1:
            raise ValueError("readers must be >= 1")
        self._data_dir = Path(data_dir)
        self._path = self._data_dir / filename
        self._synchronous: Synchronous = synchronous
        self._readers = readers
        self._checkpoint_interval = checkpoint_interval
        self._wal_restart_frames = wal_restart_frames
        #: Set by the checkpoint thread, cleared by the writer (a bool: atomic
        #: under the GIL): the WAL is long and almost all checkpointed.
        self._restart_wanted = False
        self._open_lock = asyncio.Lock()
        self._is_open = False
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = DataDirLock(self._data_dir)
        self._queue: queue.SimpleQueue[WriteOp | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._reader_conns: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        self._session: Session | None = None
        #: Why the writer thread died, until a new one runs.
        self._writer_error: BaseException | None = None
        self._restart: asyncio.Task[None] | None = None
        self.stats = WriteStats()
        self._commits = CommitBarrier()

    # Public methods

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def data_dir(self) -> Path:
        """The data directory this database owns while open."""
        return self._data_dir

    @property
    def synchronous(self) -> Synchronous:
        """The durability mode, named in every performance figure."""
        return self._synchronous

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not run."""
        return self._is_open

    @property
    def epochs_rotated(self) -> bool:
        """Whether the last :meth:`open` gave every stream a new epoch (see :attr:`rotation`)."""
        return self._session is not None and self._session.rotation is not None

    @property
    def rotation(self) -> str | None:
        """Why the last :meth:`open` rotated every epoch (unclean NORMAL, restore, request)."""
        return None if self._session is None else self._session.rotation

    @property
    def streams_rotated(self) -> int:
        """How many streams the last :meth:`open` gave a new epoch."""
        return 0 if self._session is None else self._session.rotated

    @property
    def database_id(self) -> str | None:
        """The database's identity (``meta.db_id``), known once opened."""
        return None if self._session is None else self._session.db_id

    async def open(self, *, rotate_epochs: bool = False) -> None:
        """Lock the directory, open connections, migrate. A second call is a no-op.

        Before anything else is written, every stream gets a new epoch if the
        previous NORMAL session did not close cleanly, if the database is not
        the one the lock marker names (replaced or restored), or if
        ``rotate_epochs`` asks for it (the restore procedure).

        Raises:
            DataDirLocked: another process (or another ``SqliteDatabase``)
                holds the directory.
            InternalError: the database is newer than this code, or cannot
                be put in WAL mode.
        """
        async with self._open_lock:
            if self._is_open:
                return
            self._loop = asyncio.get_running_loop()
            self._writer_error = None  # a death in a past session says nothing about this one
            self._session = None
            previous = await asyncio.to_thread(self._lock.acquire)
            try:
                session = await self._start_writer(previous, rotate_epochs)
                assert session is not None  # a first start always opens a session
                self._session = session
                await asyncio.to_thread(
                    self._lock.mark,
                    "open",
                    self._synchronous,
                    db_id=session.db_id,
                    stamp=session.stamp,
                )
                await asyncio.to_thread(self._open_readers)
                self._start_checkpointer()
            except BaseException:
                await self._shutdown()
                raise
            self._is_open = True
            self._accepting = True

    async def close(self) -> None:
        """Commit what is queued, stop every thread, checkpoint, release the lock."""
        async with self._open_lock:
            if not self._is_open:
                return
            self._accepting = False
            self._is_open = False
            await self._shutdown(clean=True)

    async def write(
        self,
        op: Callable[[sqlite3.Connection], T],
        *,
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``op`` on the writer connection in the next group transaction.

        ``op`` runs inside its own savepoint: if it raises, only its changes are
        rolled back and only its caller sees the exception. ``on_commit`` runs
        on the event loop once the group's ``COMMIT`` returned, before the
        caller resumes and even if the caller was cancelled meanwhile, so that
        in-memory state (the log's tail) never misses a committed write.

        Raises:
            LogUnavailable: the database is not open, or the group's
                ``BEGIN``/``COMMIT`` failed (nothing of the group committed).
        """
        return await self.submit(op, on_commit=on_commit)

    def submit(
        self,
        op: Callable[[sqlite3.Connection], T],
        *,
        on_commit: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``op`` for the next group now and return its future (see :meth:`write`).

        For callers on the hot path that must not spend an event-loop
        iteration before their op reaches the writer.

        Raises:
            LogUnavailable: the database is not open, or its writer thread
                died and no new one runs yet.
        """
        if not self._accepting or self._loop is None:
            raise LogUnavailable(f"database {self._path} is not open")
        if self._writer_error is not None:
            self._restart_writer()  # the last restart failed: try again, in the background
            raise LogUnavailable(
                f"the writer thread of {self._path} died ({self._writer_error!r}); "
                "a new one is being started"
            )
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(WriteOp(op, future, cast("Callable[[Any], None] | None", on_commit)))
        return future

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on a read-only connection (committed data only).

        Raises:
            LogUnavailable: the database is not open, or SQLite failed.
        """
        pool = self._reader_pool
        if not self._accepting or pool is None or self._loop is None:
            raise LogUnavailable(f"database {self._path} is not open")
        return await self._loop.run_in_executor(pool, self._run_read, op)

    # Private methods: connections

    def _connect(self, *, query_only: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Statement journals (each op's savepoint over indexed tables) in
            # memory: on disk they spilled to a temporary file for any op over
            # 64 KiB, about a hundred write() calls per group with a 64 KiB
            # event. They are never needed after a crash, so durability is
            # unchanged.
            conn.execute("PRAGMA temp_store=MEMORY")
            if query_only:
                conn.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InternalError(f"cannot put {self._path} in WAL mode (got {mode!r})")
            # Checkpoints run on their own thread, off the commit path.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            migrate(conn, self._path)
        except BaseException:
            conn.close()
            raise
        return conn

    # Private methods: readers and checkpoints

    def _open_readers(self) -> None:
        conns = [self._connect(query_only=True) for _ in range(self._readers)]
        for conn in conns:
            self._reader_conns.put(conn)
        self._reader_pool = ThreadPoolExecutor(self._readers, "agentcast-sqlite-reader")

    def _run_read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        # The pool has as many threads as connections, so one is always free.
        conn = self._reader_conns.get()
        try:
            return op(conn)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"read failed: {exc}") from exc
        finally:
            self._reader_conns.put(conn)

    def _start_checkpointer(self) -> None:
        self._checkpoint_stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_main,
            args=(self._checkpoint_stop,),
            name="agentcast-sqlite-checkpoint",
            daemon=True,
        )
        self._checkpointer.start()

    def _checkpoint_main(self, stop: threading.Event) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error:
            logger.exception("checkpoint thread cannot open %s", self._path)
            return
        try:
            while not stop.wait(self._checkpoint_interval):
                try:
                    # PASSIVE never blocks the writer nor waits for readers.
                    busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if not busy and frames >= self._wal_restart_frames:
                        self._restart_wanted = True
                except sqlite3.Error:
                    logger.exception("WAL checkpoint of %s failed", self._path)
        finally:
            conn.close()

    # Private methods: shutdown

    async def _shutdown(self, *, clean: bool = False) -> None:
        """Stop whatever was started, in dependency order; release the lock last."""
        self._accepting = False
        if self._checkpointer is not None:
            self._checkpoint_stop.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        session = self._session
        # The last write of a clean close: a stamp only this close knows, so a
        # copy taken while we ran does not match the marker.
        stamp = await self._stop_writer(stamp=clean and session is not None)
        self._commits.settle()  # the writer is gone: nothing more will run
        if session is not None and stamp is not None:
            session = self._session = session._replace(stamp=stamp)
        if self._reader_pool is not None:
            await asyncio.to_thread(self._reader_pool.shutdown, True)
            self._reader_pool = None
        while not self._reader_conns.empty():
            self._reader_conns.get_nowait().close()
        if self._lock.held:
            if clean:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(
                        self._lock.mark,
                        "closed",
                        self._synchronous,
                        db_id=None if session is None else session.db_id,
                        stamp=None if session is None else session.stamp,
                    )
            self._lock.release()
