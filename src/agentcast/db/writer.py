"""The writer thread of :class:`~agentcast.db.sqlite.SqliteDatabase` and its group commit.

Every write of the process goes through this one thread and its one
connection, so there is never a ``SQLITE_BUSY`` between our own writers and
the log can assign ``seq`` without races. Kept apart from the database's
life (open, close, readers, checkpoints): this module is how a queued op
becomes durable, and what happens when that machinery itself fails.

**Group commit** (docs/architecture.md invariant 2, "group commit makes that cheap"):
:meth:`~agentcast.db.sqlite.SqliteDatabase.write` queues an op; the writer
thread takes everything queued (up to :data:`MAX_GROUP_OPS`) and runs it in
ONE ``BEGIN IMMEDIATE … COMMIT``, each op inside its own ``SAVEPOINT`` so
that an op that raises is rolled back alone. With ``synchronous=FULL`` the
``COMMIT`` is the fsync, so N concurrent appends cost one fsync. Results
(and ``on_commit`` callbacks) are delivered to the event loop only after the
``COMMIT`` returned: an event is delivered to nobody before it is durable.
If ``BEGIN`` or ``COMMIT`` fails, every op of the group gets
:class:`~agentcast.errors.LogUnavailable` and nothing of the group is
committed.

**Starting the WAL over.** Checkpoints run on their own thread and
connection (``wal_autocheckpoint`` is off), so the commit path never pays
for copying pages. SQLite starts the WAL over only when a write transaction
begins with every frame checkpointed, which a background checkpoint never
achieves under a steady stream of commits (a 15-second load grew it to
535 MB, and every commit then extended the file). So once the WAL holds
:data:`WAL_RESTART_FRAMES`, the writer checkpoints the few frames written
since, between two groups, and the next group starts the WAL from its
beginning; ``journal_size_limit`` trims the file.

**A dead writer.** Every op is resolved by the writer thread; if an
unexpected exception escapes its loop, nothing else would ever resolve the
queued futures and every write would wait for ever. Instead the thread's
death fails the group it held with :class:`WriteOutcomeUnknown` and every
queued op with :class:`~agentcast.errors.LogUnavailable`, writes fail at once
while :attr:`~GroupWriter.writer_alive` is false, and a new writer thread
is started; if that fails, the next write tries again. The bridge's health
probe writes, so it fails for as long as the writer is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, cast

from ..errors import LogUnavailable
from .barrier import CommitBarrier
from .session import Session, open_session, restamp

__all__ = [
    "MAX_GROUP_OPS",
    "WAL_RESTART_FRAMES",
    "GroupWriter",
    "WriteOp",
    "WriteOutcomeUnknown",
    "WriteStats",
]

#: The database's logger: everything of the SQLite database logs under one name.
logger = logging.getLogger("agentcast.db.sqlite")

#: Most ops committed in one transaction; the rest wait for the next group.
MAX_GROUP_OPS: Final = 1024
#: WAL frames (pages of 4 KiB) after which the WAL is started over (16 MiB).
WAL_RESTART_FRAMES: Final = 4096


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


class WriteOp(NamedTuple):
    """One queued write: the function, its caller's future, its commit callback."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None


_STOP: Final = object()  # sentinel that ends the writer thread
_SAVEPOINT: Final = "agentcast_op"


class GroupWriter:
    """The writer thread and its group commit, for :class:`~agentcast.db.sqlite.SqliteDatabase`.

    Set by the database (its ``__init__``): every attribute declared below.
    Provided by it: :meth:`_connect_writer`, a seam that fault tests replace.
    """

    _path: Path
    _loop: asyncio.AbstractEventLoop | None
    _open_lock: asyncio.Lock
    _is_open: bool
    _accepting: bool
    _queue: queue.SimpleQueue[WriteOp | object]
    _writer: threading.Thread | None
    _writer_done: asyncio.Future[None] | None
    #: Why the writer thread died, until a new one runs.
    _writer_error: BaseException | None
    _restart: asyncio.Task[None] | None
    #: Set by the checkpoint thread, cleared by the writer: the WAL is long and
    #: almost all checkpointed.
    _restart_wanted: bool
    stats: WriteStats
    #: Open the writer's connection (WAL mode, migrated).
    _connect_writer: Callable[[], sqlite3.Connection]
    #: Groups whose COMMIT the writer thread began, and which were delivered.
    _commits: CommitBarrier

    async def settled(self) -> None:
        """Wait until every group whose COMMIT has begun has had its callbacks run.

        A reader may see a commit a moment before the event loop runs its
        ``on_commit`` callbacks (they are handed over after ``COMMIT``
        returns). A decision that reads state those callbacks maintain — the
        runner's slots, freed by the terminal event's commit listener — after
        learning of the commit elsewhere (a status read) awaits this first.
        Cheap when nothing is pending; never waits for commits begun later.
        """
        await self._commits.wait()

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

    async def _start_writer(
        self, previous: dict[str, Any] | None, rotate_epochs: bool = False
    ) -> Session | None:
        """Start the writer thread; on a first start (``previous``: the lock marker) open a session.

        A restarted writer (``previous`` is ``None``) only reconnects: the
        session of this open stays valid.
        """
        loop = asyncio.get_running_loop()
        started: ThreadFuture[Session | None] = ThreadFuture()
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

    async def _stop_writer(self, *, stamp: bool) -> str | None:
        """Commit what is queued, then end the writer thread.

        With ``stamp``, the last write replaces the database's stamp (a clean
        close: a copy taken while we ran then no longer matches the marker);
        returns the new stamp if that write committed, else ``None``.
        """
        if self._writer is None:
            return None
        stamped: asyncio.Future[str] | None = None
        if self._writer.is_alive() and self._writer_error is None:
            if stamp and self._loop is not None:
                stamped = self._loop.create_future()
                self._queue.put(WriteOp(restamp, stamped, None))
            self._queue.put(_STOP)  # ops queued before it still commit
            if self._writer_done is not None:
                await self._writer_done
        await asyncio.to_thread(self._writer.join)
        self._writer = None
        if stamped is not None and _succeeded(stamped):
            return stamped.result()
        return None

    def _writer_main(
        self,
        loop: asyncio.AbstractEventLoop,
        q: queue.SimpleQueue[WriteOp | object],
        started: ThreadFuture[Session | None],
        done: asyncio.Future[None],
        previous: dict[str, Any] | None,
        force_rotation: bool,
    ) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect_writer()
            session = (
                None
                if previous is None
                else open_session(conn, self._path, previous, force_rotation)
            )
        except BaseException as exc:
            if conn is not None:
                conn.close()
            started.set_exception(exc)
            _call_soon(loop, _resolve, done)
            return
        started.set_result(session)
        group: list[WriteOp] = []  # taken from the queue, outcome not yet handed to the loop
        stopping = False
        try:
            while not stopping:
                first = q.get()
                if first is _STOP:
                    break
                group = [cast(WriteOp, first)]
                while len(group) < MAX_GROUP_OPS:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    group.append(cast(WriteOp, item))
                outcomes, conn = self._run_group(conn, group)
                _call_soon(loop, self._deliver, group, outcomes, self._commits.begun)
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
        self, conn: sqlite3.Connection | None, group: list[WriteOp]
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
            self._commits.begun += 1  # before COMMIT: a reader may see it from then on
            self._commit(conn)
        except BaseException as exc:
            return self._fail_group(group, exc), self._after_failure(conn)
        self.stats.groups_committed += 1
        self.stats.ops_committed += len(group)
        return outcomes, conn

    def _commit(self, conn: sqlite3.Connection) -> None:
        """The group's COMMIT: the fsync with FULL (a seam for fault tests)."""
        conn.execute("COMMIT")

    def _fail_group(self, group: list[WriteOp], cause: BaseException) -> list[tuple[bool, Any]]:
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

    def _deliver(
        self, group: list[WriteOp], outcomes: list[tuple[bool, Any]], begun: int = 0
    ) -> None:
        """On the event loop: run commit callbacks, then resume each caller, in op order.

        ``begun`` is the writer's count of begun commits when it handed this
        group over: every one of them has now been delivered (groups are
        sequential), which :meth:`settled` waits for.
        """
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
        self._commits.settle(begun)

    def _writer_died(
        self, q: queue.SimpleQueue[WriteOp | object], in_flight: list[WriteOp], cause: BaseException
    ) -> None:
        """On the event loop: fail every op the dead writer held or would have taken, restart it.

        Runs before any op submitted after the death could be queued behind
        nobody: ``submit`` refuses from here on until a new writer runs.
        """
        self.stats.writer_deaths += 1
        self._writer_error = cause
        self._commits.settle()  # no callback of the dead writer will run
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
            if isinstance(item, WriteOp):
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
