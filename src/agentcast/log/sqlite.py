"""The SQLite event log: the embedded default, durable with group commit.

Tables ``streams`` (epoch, retained range, head per thread) and ``events``
(one row per event, envelope bytes included) live in the data directory's
database, shared with the store (:mod:`agentcast.db.schema`).

* **Durable before visible** (docs/architecture.md invariant 2): each
  ``append`` is one op of the database writer, queued at once; the writer
  commits everything queued in one transaction (its group commit), and the
  tail is fed and followers are woken by the op's ``on_commit`` callback,
  which runs only after the group's ``COMMIT`` (fsync with
  ``synchronous=FULL``) returned.
* **Batching is the caller's.** The log does not merge concurrent appends:
  its one producer in a server, the bridge's appender, already hands it
  every event emitted meanwhile as one append, and the writer's group
  commit shares the fsync with whatever else is queued (store writes, a
  second appender). Grouping lives in those two places only.
* **Seqs are never reissued**: seqs are assigned from ``streams.last_seq``
  read inside the transaction, never from an in-memory counter, so a failed
  group leaves nothing to resynchronise. The epoch is created once with the
  stream row and kept by trims and restarts (docs/event-log.md, "Positions
  and resume"); see :mod:`agentcast.db.session` for the ``NORMAL`` mode case.
* **Idempotent** (invariant 7): a draft whose ``event_id`` is stored — or
  appears earlier in the same batch, or in an op earlier in the same group —
  is returned as stored, not stored again.
* **Run status with its terminal event** (invariant 3): the optional
  projector runs inside the same op, so it commits or rolls back with it.
* **Stream heads in memory.** :meth:`SqliteLog.info` answers from a bounded
  cache that every commit callback advances and that never moves a stream
  back, even when a read races a commit (:mod:`agentcast.log.heads`).
* **Transient or permanent.** A failed append raises
  :class:`~agentcast.errors.LogUnavailable` when retrying may succeed (the
  database is busy, full or failing — ``sqlite3.OperationalError`` — or the
  group's ``BEGIN``/``COMMIT`` failed) and
  :class:`~agentcast.errors.AppendRejected` when the same events would fail
  the same way (a constraint or a bad value — ``IntegrityError``,
  ``DataError``, ``ProgrammingError``, ``InterfaceError`` — or any other
  exception from the projector): the bridge retries the first and fails only
  that emit on the second, so one bad event never stalls every run.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from ..db.sqlite import SqliteDatabase, WriteOutcomeUnknown
from ..errors import AppendRejected, LogUnavailable
from .base import EventDraft, EventLog, StoredEvent, StreamInfo, resolve_start
from .follower import StreamFollower
from .heads import DEFAULT_INFO_THREADS, StreamHeads
from .memory import stored_event
from .tail import DEFAULT_TAIL_EVENTS, DEFAULT_TAIL_THREADS, CommitListener, Tail

__all__ = ["SqliteLog", "SqliteProjector", "new_epoch"]

#: Called inside the append's transaction with each batch of new events.
SqliteProjector = Callable[[sqlite3.Connection, list[StoredEvent]], None]

_COLUMNS: Final = "thread_id, seq, event_id, run_id, parent_run_id, type, ts, raw"
_INSERT: Final = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_READ: Final = f"SELECT {_COLUMNS} FROM events WHERE thread_id = ? AND seq > ? ORDER BY seq LIMIT ?"
_STREAM: Final = "SELECT epoch, first_seq, last_seq FROM streams WHERE thread_id = ?"
_ID_CHUNK: Final = 500  # stay far below SQLite's bound on query parameters
#: SQLite errors that a retry of the same append would meet again.
_REJECTED: Final = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.NotSupportedError,
)


def new_epoch() -> str:
    """A fresh random epoch token (64 bits, hex)."""
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class _Appended:
    """One ``append`` call's result: its events as stored, and which of them are new."""

    stored: list[StoredEvent]
    new: list[StoredEvent]


class SqliteLog:
    """An :class:`~agentcast.log.base.EventLog` in the data directory's SQLite database.

    The database is owned by whoever created it (it is shared with the store):
    :meth:`open` opens it if needed, :meth:`close` ends followers but leaves
    the database open.

    Each ``append`` call is one op (one id look-up, one ``executemany``) of
    the database's group commit; an op that raises is rolled back alone, so
    one bad call fails alone.

    Args:
        db: The shared database.
        projector: Optional callback run in the append's transaction, once per
            ``append`` call that stored something, in call order.
        tail_events_per_thread: Bound of the follow tail per thread.
        tail_threads: Bound of threads in the follow tail.
        info_threads: Bound of stream infos kept in memory.
    """

    name = "sqlite"

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        projector: SqliteProjector | None = None,
        tail_events_per_thread: int = DEFAULT_TAIL_EVENTS,
        tail_threads: int = DEFAULT_TAIL_THREADS,
        info_threads: int = DEFAULT_INFO_THREADS,
    ) -> None:
        if info_threads < 1:
            raise ValueError("info_threads must be >= 1")
        self._db = db
        self._projector = projector
        self._tail = Tail(tail_events_per_thread, tail_threads)
        self._heads = StreamHeads(info_threads)
        self._closed = False
        #: Appends queued at the writer and not yet resolved (``close`` waits for them).
        self._in_flight: set[asyncio.Future[Any]] = set()
        #: Durability mode for figures: the database's ``synchronous``.
        self.durability: str = db.synchronous

    # Public methods

    @property
    def db(self) -> SqliteDatabase:
        """The shared database."""
        return self._db

    async def open(self) -> None:
        """Open the database if its owner has not yet; accept calls again after ``close``."""
        await self._db.open()
        self._tail.clear()  # start from what the database says, not from a past session
        self._heads.clear()
        self._tail.reopen()
        self._closed = False

    async def close(self) -> None:
        """Finish appends already made, then end every follower.

        The database stays open for its other users.
        """
        self._closed = True
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
        self._tail.close()

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Durably append ``drafts`` in one transaction; see ``EventLog.append``.

        Raises:
            LogUnavailable: nothing was committed, or (the writer thread died
                with it in flight) maybe it was; retrying is safe either way.
            AppendRejected: nothing was committed and retrying the same
                drafts would fail the same way.
        """
        self._check_open()
        if not drafts:
            return []
        batch = list(drafts)
        try:
            # Queued right here, not from a new task: one event-loop iteration
            # less between an append and its commit (the hot path).
            written = self._db.submit(partial(self._insert, batch), on_commit=self._on_appended)
        except BaseException as exc:
            error = _mapped(exc)
            raise error from error.__cause__
        self._in_flight.add(written)
        # A callback, not code after the await: it runs even if the caller is cancelled.
        written.add_done_callback(partial(self._settled, batch))
        try:
            appended: _Appended = await written
        except BaseException as exc:
            if written.done() and not written.cancelled() and written.exception() is exc:
                error = _mapped(exc)
                raise error from error.__cause__
            raise
        return appended.stored

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` retained events with ``seq > after_seq``, in order."""
        self._check_open()
        if limit <= 0:
            return []

        def op(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(_READ, (thread_id, after_seq, limit)).fetchall()
            return [StoredEvent(*row) for row in rows]

        return await self._db.read(op)

    async def info(self, thread_id: str) -> StreamInfo:
        """The stream's epoch and retained range, creating the stream (and epoch) if new.

        Creating it here gives a client that subscribes before the first
        event an epoch that the first event will keep.
        """
        self._check_open()
        cached = self._heads.get(thread_id)
        if cached is not None:
            return cached

        def lookup(conn: sqlite3.Connection) -> Any:
            return conn.execute(_STREAM, (thread_id,)).fetchone()

        # Commits that land while we wait are recorded in ``pending`` (see
        # ``StreamHeads.advance``): the row we get may predate them.
        with self._heads.lookup(thread_id) as pending:
            row = await self._db.read(lookup)
            if row is None:
                row = await self._write(partial(_get_or_create, thread_id))
        epoch, first_seq, last_seq = row
        return self._heads.looked_up(thread_id, pending, StreamInfo(epoch, first_seq, last_seq))

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> StreamFollower:
        """Start following ``thread_id`` from the position, per ``resolve_start``."""
        start = resolve_start(await self.info(thread_id), after_seq, epoch)
        return StreamFollower(
            thread_id, start, tail=self._tail, read=self.read, is_closed=self._is_closed
        )

    async def trim(self, thread_id: str, before_seq: int) -> int:
        """Delete events with ``seq < before_seq``; keep the epoch. Returns how many."""
        self._check_open()

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(_STREAM, (thread_id,)).fetchone()
            if row is None:
                return 0, 0
            _, first_seq, last_seq = row
            cutoff = min(before_seq, last_seq + 1)
            if cutoff <= first_seq:
                return 0, 0
            deleted = conn.execute(
                "DELETE FROM events WHERE thread_id = ? AND seq < ?", (thread_id, cutoff)
            ).rowcount
            conn.execute(
                "UPDATE streams SET first_seq = ? WHERE thread_id = ?", (cutoff, thread_id)
            )
            return deleted, cutoff

        def on_commit(result: tuple[int, int]) -> None:
            if result[1]:
                self._tail.trim(thread_id, result[1])
                self._heads.trimmed(thread_id, result[1])

        deleted, _ = await self._write(op, on_commit=on_commit)
        return int(deleted)

    async def settle(self) -> None:
        """Wait until the callbacks of every commit already begun have run (``EventLog.settle``)."""
        await self._db.settled()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Run ``listener(events)`` after each commit, before any follower sees the events."""
        self._tail.add_commit_listener(listener)

    # Private methods

    def _settled(self, batch: list[EventDraft], written: asyncio.Future[Any]) -> None:
        """One append resolved: forget it; if its outcome is unknown, re-read its threads."""
        self._in_flight.discard(written)
        if not written.cancelled() and isinstance(written.exception(), WriteOutcomeUnknown):
            self._resync({draft.thread_id: None for draft in batch})

    def _insert(self, drafts: list[EventDraft], conn: sqlite3.Connection) -> _Appended:
        """Store one append's drafts in order, on the writer thread in the group transaction."""
        # Invariant 7 needs the look-up only for ids that may have been stored
        # before (the caller's own, or a retry); the unique index guards the rest.
        known = _stored_by_id(conn, {d.event_id for d in drafts if not d.fresh})
        # One query for every stream of the append, not one per thread (hot path).
        heads = _heads(conn, {d.thread_id for d in drafts})
        stored: list[StoredEvent] = []
        new: list[StoredEvent] = []
        rows: list[tuple[Any, ...]] = []
        for draft in drafts:
            event = known.get(draft.event_id)
            if event is None:  # invariant 7: a known event_id is never stored twice
                # Invariant 2: seqs come from streams.last_seq read in this
                # transaction, so a rolled-back group reissues nothing.
                seq = heads[draft.thread_id] = heads[draft.thread_id] + 1
                event = known[draft.event_id] = stored_event(draft, seq)
                new.append(event)
                rows.append(
                    (
                        event.thread_id,
                        seq,
                        event.event_id,
                        event.run_id,
                        event.parent_run_id,
                        event.type,
                        event.ts,
                        event.raw,
                    )
                )
            stored.append(event)
        if rows:
            conn.executemany(_INSERT, rows)
            conn.executemany(
                "UPDATE streams SET last_seq = ? WHERE thread_id = ?",
                [(seq, thread_id) for thread_id, seq in heads.items()],
            )
            if self._projector is not None:
                # Invariant 3: the projection commits (or not) with the events.
                self._projector(conn, new)
        return _Appended(stored, new)

    def _on_appended(self, appended: _Appended) -> None:
        # Runs after COMMIT returned (invariant 2: durable before visible),
        # even if the caller was cancelled meanwhile.
        if appended.new:
            self._heads.advance(appended.new)
            self._tail.publish(appended.new)

    async def _write(
        self,
        op: Callable[[sqlite3.Connection], Any],
        on_commit: Callable[[Any], None] | None = None,
    ) -> Any:
        try:
            return await self._db.write(op, on_commit=on_commit)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"write failed: {exc}") from exc

    @property
    def _infos(self) -> OrderedDict[str, StreamInfo]:
        """The cached stream infos, least recently used first (for tests)."""
        return self._heads.infos

    def _remember(self, thread_id: str, info: StreamInfo) -> StreamInfo:
        """Cache what the database said, never moving a cached stream back (for tests)."""
        return self._heads.remember(thread_id, info)

    def _resync(self, thread_ids: Iterable[str]) -> None:
        """Forget what we hold about threads whose write may have committed unseen.

        The writer died with the write in flight: if it committed, no commit
        callback ran, so the cached head and the tail may be behind the
        database. Forgetting them sends the next ``info`` and every follower
        to the database; waking the followers lets them find such events now
        instead of at the thread's next commit (a retried append finds them
        stored and publishes nothing).
        """
        threads = list(thread_ids)
        for thread_id in threads:
            self._heads.forget(thread_id)
            self._tail.forget(thread_id)
        for thread_id in threads:
            self._tail.notify(thread_id)

    def _is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LogUnavailable("log closed")


def _as_log(exc: BaseException) -> BaseException:
    """What one append call's failure means to its caller: retry it, or give it up.

    ``LogUnavailable`` (retry) for the database's own trouble — an
    ``OperationalError`` (I/O, full, locked, …) or any other SQLite error
    that is not about the statement — and for the group's ``BEGIN``/``COMMIT``
    (already a ``LogUnavailable``). ``AppendRejected`` for what a retry would
    meet again: a constraint, a bad value or API misuse, or any non-SQLite
    exception (the projector's, an event that cannot be encoded). The bridge
    retries a ``LogUnavailable`` for ever, so getting this wrong stalls every
    run behind one bad event. Cancellation and exits pass unchanged.
    """
    if isinstance(exc, LogUnavailable | AppendRejected):
        return exc
    error: Exception
    if isinstance(exc, _REJECTED) or (
        isinstance(exc, Exception) and not isinstance(exc, sqlite3.Error)
    ):
        error = AppendRejected(f"the append was rejected: {exc!r}")
    elif isinstance(exc, sqlite3.Error):
        error = LogUnavailable(f"append failed: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


def _mapped(exc: BaseException) -> BaseException:
    """``exc`` as :func:`_as_log` maps it, with ``exc`` as its cause (never its own)."""
    error = _as_log(exc)
    if error is not exc and error.__cause__ is None:
        error.__cause__ = exc
    return error


def _get_or_create(thread_id: str, conn: sqlite3.Connection) -> tuple[str, int, int]:
    """The stream's ``(epoch, first_seq, last_seq)``; a new stream gets a new epoch."""
    row = conn.execute(_STREAM, (thread_id,)).fetchone()
    if row is None:
        row = (new_epoch(), 1, 0)
        conn.execute(
            "INSERT INTO streams (thread_id, epoch, first_seq, last_seq) VALUES (?, ?, ?, ?)",
            (thread_id, *row),
        )
    return row  # type: ignore[no-any-return]


def _heads(conn: sqlite3.Connection, thread_ids: set[str]) -> dict[str, int]:
    """``last_seq`` of each stream, read in this transaction; new streams are created."""
    ids = list(thread_ids)
    heads: dict[str, int] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        chunk = ids[i : i + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT thread_id, last_seq FROM streams WHERE thread_id IN ({marks})"
        heads.update(conn.execute(sql, chunk).fetchall())
    for thread_id in ids:
        if thread_id not in heads:
            heads[thread_id] = _get_or_create(thread_id, conn)[2]
    return heads


def _stored_by_id(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
    ids = list(event_ids)
    found: dict[str, StoredEvent] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        chunk = ids[i : i + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {_COLUMNS} FROM events WHERE event_id IN ({marks})"
        for row in conn.execute(sql, chunk):
            found[row[2]] = StoredEvent(*row)
    return found


if TYPE_CHECKING:  # mypy proves the backend satisfies the protocol

    def _check(log: SqliteLog) -> EventLog:
        return log
