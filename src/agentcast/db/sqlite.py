"""Single-writer SQLite access with group commit, shared by the log and the store.

One process owns a data directory (docs/architecture.md invariant 10): :meth:`open`
takes an exclusive ``flock`` on ``<data_dir>/agentcast.lock`` and keeps it
until :meth:`close`. Inside the process every write goes through one writer
thread and one connection, so there is never a ``SQLITE_BUSY`` between our
own writers and the log can assign ``seq`` without races.

**Group commit** (docs/architecture.md invariant 2, "group commit makes that cheap"):
:meth:`write` queues an op; the writer thread takes everything queued (up to
:data:`MAX_GROUP_OPS`) and runs it in ONE ``BEGIN IMMEDIATE … COMMIT``, each op
inside its own ``SAVEPOINT`` so that an op that raises is rolled back alone.
With ``synchronous=FULL`` the ``COMMIT`` is the fsync, so N concurrent
appends cost one fsync. Results (and ``on_commit`` callbacks) are delivered
to the event loop only after the ``COMMIT`` returned: an event is delivered
to nobody before it is durable. If ``BEGIN`` or ``COMMIT`` fails, every op of
the group gets :class:`~agentcast.errors.LogUnavailable` and nothing of the
group is committed.

Checkpoints run on their own thread and connection (``wal_autocheckpoint``
is off), so the commit path never pays for copying pages. SQLite starts the
WAL over only when a write transaction begins with every frame checkpointed,
which a background checkpoint never achieves under a steady stream of commits
(a 15-second load grew it to 535 MB, and every commit then extended the
file). So once the WAL holds :data:`WAL_RESTART_FRAMES`, the writer
checkpoints the few frames written since, between two groups, and the next
group starts the WAL from its beginning; ``journal_size_limit`` trims the file.

**NORMAL mode.** ``synchronous=NORMAL`` is a documented opt-in: a power loss
may lose the last commits. Because a lost commit could let a ``seq`` be
reissued under the same epoch (forbidden by invariant 2), the lock file
records the mode of the session holding it; when the previous session was
NORMAL and did not close cleanly, :meth:`open` gives every stream a new
epoch before anything else is written, so clients resume with
``recovered: false`` instead of a silent gap.

**Restores.** A database restored from a backup has lost the commits made
after the copy, so the same ``(epoch, seq)`` would name other events: a
client would skip or repeat events silently. The database keeps an identity
(``meta.db_id``, made once) and a ``stamp`` replaced at every open and clean
close; the lock marker records both. :meth:`open` rotates every epoch, as for
NORMAL mode, when the marker is missing or unreadable, names another
database (the file was replaced), or names another stamp (an older copy of
this database). A copy taken while the server ran and restored after a
crash carries the marker's stamp and cannot be told apart: the documented
restore procedure therefore always rotates (``agentcast db rotate-epochs``,
:meth:`open` with ``rotate_epochs=True``). A crash in the instant between the
database's stamp and the marker's may rotate once needlessly: the safe
direction.

**A dead writer.** Every op is resolved by the writer thread; if an
unexpected exception escapes its loop, nothing else would ever resolve the
queued futures and every write would wait for ever. Instead the thread's
death fails the group it held with :class:`WriteOutcomeUnknown` and every
queued op with :class:`~agentcast.errors.LogUnavailable`, writes fail at once
while :attr:`SqliteDatabase.writer_alive` is false, and a new writer thread
is started; if that fails, the next write tries again. The bridge's health
probe writes, so it fails for as long as the writer is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

from ..errors import InternalError, LogUnavailable
from .lock import LOCK_FILENAME, DataDirLock
from .schema import MIGRATIONS, SCHEMA_VERSION

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

#: Most ops committed in one transaction; the rest wait for the next group.
MAX_GROUP_OPS: Final = 1024
#: WAL frames (pages of 4 KiB) after which the WAL is started over (16 MiB).
WAL_RESTART_FRAMES: Final = 4096
#: The WAL file is truncated back to this many bytes once it was started over.
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_BUSY_TIMEOUT_S: Final = 5.0


@dataclass(slots=True)
class WriteStats:
    """Counters of the writer, for metrics and for tests that prove grouping."""

    groups_committed: int = 0
    ops_committed: int = 0
    groups_failed: int = 0
    #: Times the writer caught up with the checkpoint so that the WAL starts over.
    wal_restarts: int = 0
    #: Times the writer thread died of an unexpected exception.
    writer_deaths: int = 0
    #: Times a new writer thread replaced a dead one.
    writer_restarts: int = 0
    #: Times a new writer thread could not start (the next write tries again).
    writer_restart_failures: int = 0


class WriteOutcomeUnknown(LogUnavailable):
    """The writer thread died while this write was in its group.

    It may or may not have committed, and its commit callback did not run:
    retry it (appends are idempotent) and re-read what it touched.
    """


class _Session(NamedTuple):
    """What :meth:`SqliteDatabase.open` found and wrote before any other write."""

    db_id: str
    stamp: str
    #: Why every epoch was rotated, or ``None``.
    rotation: str | None
    #: Streams that got a new epoch.
    rotated: int


class _Op(NamedTuple):
    """One queued write: the function, its caller's future, its commit callback."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None


_STOP: Final = object()  # sentinel that ends the writer thread
_SAVEPOINT: Final = "agentcast_op"


class SqliteDatabase:
    """The data directory's SQLite database: one writer thread, a reader pool.

    Args:
        data_dir: Directory holding the database and the lock file (created).
        synchronous: ``"FULL"`` (default; every commit is fsynced) or
            ``"NORMAL"`` (faster; a power loss may lose the last commits, see
            the module docstring).
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
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._reader_conns: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        self._session: _Session | None = None
        #: Why the writer thread died, until a new one runs.
        self._writer_error: BaseException | None = None
        self._restart: asyncio.Task[None] | None = None
        self.stats = WriteStats()

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

    @property
    def writer_alive(self) -> bool:
        """Whether writes can be taken now: open, and the writer thread running.

        False while closed, after the writer thread died and until a new one
        runs; meanwhile every write fails at once with ``LogUnavailable``.
        """
        writer = self._writer
        return (
            self._accepting
            and self._writer_error is None
            and writer is not None
            and writer.is_alive()
        )

    @property
    def writer_error(self) -> BaseException | None:
        """What killed the writer thread, until a new one runs."""
        return self._writer_error

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
        self._queue.put(_Op(op, future, cast("Callable[[Any], None] | None", on_commit)))
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

    # Private methods: writer thread

    async def _start_writer(
        self, previous: dict[str, Any] | None, rotate_epochs: bool = False
    ) -> _Session | None:
        """Start the writer thread; on a first start (``previous``: the lock marker) open a session.

        A restarted writer (``previous`` is ``None``) only reconnects: the
        session of this open stays valid.
        """
        loop = asyncio.get_running_loop()
        started: ThreadFuture[_Session | None] = ThreadFuture()
        done: asyncio.Future[None] = loop.create_future()
        self._writer_done = done
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._writer_main,
            args=(loop, self._queue, started, done, previous, rotate_epochs),
            name="agentcast-sqlite-writer",
            daemon=True,
        )
        self._writer.start()
        return await asyncio.wrap_future(started)

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
            _migrate(conn, self._path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_session(
        self, conn: sqlite3.Connection, previous: dict[str, Any], force: bool
    ) -> _Session:
        """Compare the database with the lock marker, rotate epochs if needed, stamp it.

        One transaction, on the writer thread before it takes any op: no
        event can be appended under an epoch that is about to change.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            has_streams = bool(conn.execute("SELECT EXISTS (SELECT 1 FROM streams)").fetchone()[0])
            reason = "it was requested (restore procedure)" if force else None
            if reason is None and has_streams:  # no stream: no position to protect
                reason = _rotation_reason(previous, meta)
            rotated = 0
            if reason is not None:
                rotated = conn.execute(
                    "UPDATE streams SET epoch = lower(hex(randomblob(8)))"
                ).rowcount
            db_id = meta.get("db_id") or _new_token()
            stamp = _new_token()
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("db_id", db_id), ("stamp", stamp)],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if reason is not None:
            # A detected restore or unclean NORMAL session is news; a requested rotation is not.
            logger.log(
                logging.INFO if force else logging.WARNING,
                "%s: %d streams got a new epoch because %s (clients resume with "
                "recovered=false instead of a silent gap or duplicates)",
                self._path,
                rotated,
                reason,
            )
        return _Session(db_id, stamp, reason, rotated)

    def _writer_main(
        self,
        loop: asyncio.AbstractEventLoop,
        q: queue.SimpleQueue[_Op | object],
        started: ThreadFuture[_Session | None],
        done: asyncio.Future[None],
        previous: dict[str, Any] | None,
        force_rotation: bool,
    ) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect_writer()
            session = (
                None if previous is None else self._open_session(conn, previous, force_rotation)
            )
        except BaseException as exc:
            if conn is not None:
                conn.close()
            started.set_exception(exc)
            _call_soon(loop, _resolve, done)
            return
        started.set_result(session)
        group: list[_Op] = []  # taken from the queue, outcome not yet handed to the loop
        stopping = False
        try:
            while not stopping:
                first = q.get()
                if first is _STOP:
                    break
                group = [cast(_Op, first)]
                while len(group) < MAX_GROUP_OPS:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    group.append(cast(_Op, item))
                outcomes, conn = self._run_group(conn, group)
                _call_soon(loop, self._deliver, group, outcomes)
                group = []
                if self._restart_wanted and conn is not None:
                    self._catch_up(conn)
        except BaseException as exc:
            # Nothing else resolves the ops: without this every write would hang.
            logger.critical("the writer thread of %s died", self._path, exc_info=True)
            _call_soon(loop, self._writer_died, q, group, exc)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            _call_soon(loop, _resolve, done)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Between two groups: checkpoint what the background checkpoint has not reached.

        Only the frames committed since it started are left, so this is short;
        with every frame checkpointed, the next group starts the WAL over.
        """
        self._restart_wanted = False
        try:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            logger.exception("WAL checkpoint of %s by the writer failed", self._path)
            return
        if busy or frames != done:
            self._restart_wanted = True  # a reader or the other checkpoint: after the next group
        else:
            self.stats.wal_restarts += 1

    def _run_group(
        self, conn: sqlite3.Connection | None, group: list[_Op]
    ) -> tuple[list[tuple[bool, Any]], sqlite3.Connection | None]:
        """Run ``group`` in one transaction; return each op's outcome and the connection.

        Runs on the writer thread. An outcome is ``(True, result)`` or
        ``(False, exception)``. The returned connection is ``None`` when it
        is no longer trustworthy (it is reopened for the next group).
        """
        try:
            if conn is None:  # dropped after a failed rollback: reopen it
                conn = self._connect_writer()
        except Exception as exc:
            return self._fail_group(group, exc), None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return self._fail_group(group, exc), self._after_failure(conn)
        # A lone op (the common case while commits keep up) needs no savepoint:
        # the transaction is its savepoint, two statements less per commit.
        savepoints = len(group) > 1
        outcomes: list[tuple[bool, Any]] = []
        try:
            for op in group:
                if savepoints:
                    conn.execute(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    outcomes.append((True, op.fn(conn)))
                except BaseException as exc:
                    if not conn.in_transaction:
                        raise  # the error aborted the whole transaction
                    if not savepoints:
                        conn.execute("ROLLBACK")
                        return [(False, exc)], conn
                    conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
                    outcomes.append((False, exc))
                if savepoints:
                    conn.execute(f"RELEASE {_SAVEPOINT}")
            self._commit(conn)
        except BaseException as exc:
            return self._fail_group(group, exc), self._after_failure(conn)
        self.stats.groups_committed += 1
        self.stats.ops_committed += len(group)
        return outcomes, conn

    def _commit(self, conn: sqlite3.Connection) -> None:
        """The group's COMMIT: the fsync with FULL (a seam for fault tests)."""
        conn.execute("COMMIT")

    def _fail_group(self, group: list[_Op], cause: BaseException) -> list[tuple[bool, Any]]:
        self.stats.groups_failed += 1
        logger.warning("write group of %d ops failed: %r", len(group), cause)
        outcomes: list[tuple[bool, Any]] = []
        for _ in group:
            error = LogUnavailable(f"the write was not committed: {cause}")
            error.__cause__ = cause
            outcomes.append((False, error))
        return outcomes

    def _after_failure(self, conn: sqlite3.Connection) -> sqlite3.Connection | None:
        """Roll back what is left; drop the connection if even that fails."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return conn
        except sqlite3.Error:
            logger.exception("rollback failed; reopening the writer connection")
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            return None

    def _deliver(self, group: list[_Op], outcomes: list[tuple[bool, Any]]) -> None:
        """On the event loop: run commit callbacks, then resume each caller, in op order."""
        for op, (ok, value) in zip(group, outcomes, strict=True):
            if ok and op.on_commit is not None:
                try:
                    op.on_commit(value)
                except Exception:
                    logger.exception("on_commit callback failed (the write is committed)")
            if op.future.done():
                continue  # the caller was cancelled; the write committed anyway
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _writer_died(
        self, q: queue.SimpleQueue[_Op | object], in_flight: list[_Op], cause: BaseException
    ) -> None:
        """On the event loop: fail every op the dead writer held or would have taken, restart it.

        Runs before any op submitted after the death could be queued behind
        nobody: ``submit`` refuses from here on until a new writer runs.
        """
        self.stats.writer_deaths += 1
        self._writer_error = cause
        for op in in_flight:
            _fail(
                op.future,
                WriteOutcomeUnknown(
                    f"the writer thread of {self._path} died ({cause!r}) with this write in "
                    "flight: it may or may not have committed; retry it"
                ),
                cause,
            )
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Op):
                _fail(
                    item.future,
                    LogUnavailable(
                        f"the writer thread of {self._path} died ({cause!r}); "
                        "the write was not committed"
                    ),
                    cause,
                )
        if self._accepting:
            self._restart_writer()

    def _restart_writer(self) -> None:
        """Start a new writer thread in the background, unless one is being started."""
        if self._restart is None or self._restart.done():
            self._restart = asyncio.get_running_loop().create_task(self._restart_main())

    async def _restart_main(self) -> None:
        # Under the open lock: never at the same time as close() or open().
        async with self._open_lock:
            if not self._is_open or self._writer_error is None:
                return
            if self._writer is not None:
                await asyncio.to_thread(self._writer.join)
            try:
                await self._start_writer(None)
            except Exception:
                self.stats.writer_restart_failures += 1
                logger.exception(
                    "a new writer thread for %s could not start; writes keep failing and "
                    "the next one tries again",
                    self._path,
                )
                return
            self._writer_error = None
            self.stats.writer_restarts += 1
            logger.warning("%s: a new writer thread runs; writes are accepted again", self._path)

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
        stamped: asyncio.Future[str] | None = None
        if self._writer is not None:
            if self._writer.is_alive() and self._writer_error is None:
                if clean and session is not None and self._loop is not None:
                    # The last write: a stamp only this clean close knows, so a
                    # copy taken while we ran does not match the marker.
                    stamped = self._loop.create_future()
                    self._queue.put(_Op(_restamp, stamped, None))
                self._queue.put(_STOP)  # ops queued before it still commit
                if self._writer_done is not None:
                    await self._writer_done
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if session is not None and stamped is not None and _succeeded(stamped):
            session = self._session = session._replace(stamp=stamped.result())
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


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply every migration newer than the database, one transaction each."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    current = int(row[0] or 0)
    if current > SCHEMA_VERSION:
        raise InternalError(
            f"{path} has schema version {current}, newer than this agentcast "
            f"(knows up to {SCHEMA_VERSION}); upgrade agentcast to open it"
        )
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        # executescript commits first, so the transaction is part of the script.
        script = (
            f"BEGIN IMMEDIATE;\n{sql}\n;DELETE FROM schema_version;\n"
            f"INSERT INTO schema_version (version) VALUES ({int(version)});\nCOMMIT;"
        )
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise InternalError(f"migration {version} of {path} failed: {exc}") from exc


def _rotation_reason(previous: dict[str, Any], meta: dict[str, str]) -> str | None:
    """Why the streams of a database with streams need new epochs, or ``None``.

    ``previous`` is the lock marker the last session left, ``meta`` the
    database's ``db_id`` and ``stamp``.
    """
    if previous.get("state") == "open" and previous.get("synchronous") != "FULL":
        return "the previous synchronous=NORMAL session did not close cleanly"
    if "state" not in previous:
        return "the lock marker is missing or unreadable (the data directory was restored?)"
    db_id, marked_id = meta.get("db_id"), previous.get("db_id")
    if db_id is None and marked_id is None:
        return None  # a database from before identities, with its marker: nothing to compare
    if db_id != marked_id:
        if marked_id is None:
            return "the lock marker names no database (written by an older agentcast, or edited)"
        return (
            f"the database file was replaced: the lock marker names database {marked_id}, "
            f"the file is {db_id or 'a database without an identity'}"
        )
    if meta.get("stamp") != previous.get("stamp"):
        return "the database is not the state the last session left (restored from a backup?)"
    return None


def _restamp(conn: sqlite3.Connection) -> str:
    """Replace the database's stamp (the last write of a clean close)."""
    stamp = _new_token()
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stamp', ?)", (stamp,))
    return stamp


def _new_token() -> str:
    return os.urandom(8).hex()


def _fail(future: asyncio.Future[Any], error: BaseException, cause: BaseException) -> None:
    if not future.done():
        error.__cause__ = cause
        future.set_exception(error)


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is already closed
        loop.call_soon_threadsafe(fn, *args)
