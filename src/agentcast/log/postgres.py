"""The PostgreSQL event log: the SQLite log's semantics on a database several servers share.

Tables ``streams`` and ``events`` (migration ``0001_log.sql``) live beside
the store's, so a run's status commits with its terminal event (the
projector, invariant 3). Every rule of :mod:`agentcast.log.sqlite` holds
here too; what differs is that other processes append to the same streams.

* **Durable before visible** (invariant 2): each ``append`` is one
  mergeable item of the database's group-commit writer
  (:mod:`agentcast.db.postgres`), queued at once; the tail is fed and
  followers are woken by the item's ``on_commit``, after ``COMMIT`` returned.
* **A group's appends run as one.** The appends queued one after the other
  in a group are stored by ONE call (:meth:`PostgresDatabase.submit_batched
  <agentcast.db.postgres.PostgresDatabase.submit_batched>`): the same
  statements as one append of all their drafts, so a group of 100
  one-event appends costs three statements, not 200. Each call still gets
  its own events in its order; if the merged call fails, the writer runs
  the appends one by one and only the culprit fails.
* **Seqs from the database, under a row lock.** The append locks its
  streams' rows (``SELECT … FOR UPDATE``, sorted by thread so that two
  processes locking the same threads never deadlock) and assigns contiguous
  seqs from ``last_seq`` read in the transaction: two processes appending
  to one thread queue on the row and never share or skip a seq, and a
  rolled-back group reissues nothing.
* **Idempotent** (invariant 7): ids that may be stored (drafts not
  ``fresh``) are looked up in the statement that locks the streams; a
  duplicate (stored before, or earlier in the same merged call) is returned
  as stored and takes no seq. Another process storing the same id at the
  same moment makes the insert fail on the unique index; the append is then
  run again, finds the stored event and returns it.
* **Few round trips.** Everything runs on the one writer connection, one
  statement after the other, so round trips, not the server, bound the
  group: one statement locks the streams and looks up the ids, one inserts
  the rows (``INSERT … SELECT * FROM unnest(…)``) and moves the heads
  (``UPDATE … FROM unnest(…)``) (the envelopes carry their seqs, so those
  must be read first), then the projector.
* **Other processes' commits.** Each group commit sends one ``pg_notify``
  with the new heads of its threads (never bodies); a listener reads what a
  followed thread gained, once, and publishes it to the tail that every
  local follower shares, plus a periodic head check that bounds the delay
  of a lost notification (:mod:`agentcast.log.pg_listener`).
* **Stream heads in memory** (:mod:`agentcast.log.heads`) move with this
  process's commits and with the notifications; since another process may
  have moved a stream further, :meth:`PostgresLog.follow` re-reads the row
  when a resume position lies beyond the cached head or names another epoch
  instead of declaring the position lost.
* **Transient or permanent.** ``LogUnavailable`` when a retry may succeed
  (an outage: SQLSTATE class 08, 53, 57P01 to 57P03, a broken connection; a
  serialization failure or deadlock retried too often), ``AppendRejected``
  when the same events would fail the same way (a constraint, a bad value,
  the projector's own exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from ..db.postgres import PostgresDatabase, WriteOutcomeUnknown, classify
from ..errors import AppendRejected, LogUnavailable
from .base import EventDraft, EventLog, StoredEvent, StreamInfo, resolve_start
from .follower import StreamFollower
from .heads import DEFAULT_INFO_THREADS, StreamHeads
from .memory import stored_event
from .pg_listener import CHANNEL, NotificationListener, parse_payload, payload_for
from .sqlite import new_epoch
from .tail import DEFAULT_TAIL_EVENTS, DEFAULT_TAIL_THREADS, CommitListener, Tail

__all__ = ["PostgresLog", "PostgresProjector"]

logger = logging.getLogger(__name__)

#: Awaited inside the append's transaction with each batch of new events.
PostgresProjector = Callable[[asyncpg.Connection, list[StoredEvent]], Awaitable[None]]

_COLUMNS: Final = "thread_id, seq, event_id, run_id, parent_run_id, type, ts, raw"
_LOCK: Final = (
    "SELECT thread_id, last_seq FROM streams WHERE thread_id = ANY($1::text[]) "
    "ORDER BY thread_id FOR UPDATE"
)
_CREATE: Final = (
    "INSERT INTO streams (thread_id, epoch) "
    "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
)
_INSERT: Final = (
    f"INSERT INTO events ({_COLUMNS}) SELECT * FROM unnest("
    "$1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::float8[], $8::bytea[])"
)
#: The rows and the new heads in ONE statement (one round trip; the op holds the rows' locks).
_INSERT_AND_SET_HEADS: Final = (
    f"WITH inserted AS ({_INSERT}) "
    "UPDATE streams AS s SET last_seq = u.last_seq "
    "FROM unnest($9::text[], $10::bigint[]) AS u(thread_id, last_seq) "
    "WHERE s.thread_id = u.thread_id"
)
_READ: Final = (
    f"SELECT {_COLUMNS} FROM events WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_STREAM: Final = "SELECT epoch, first_seq, last_seq FROM streams WHERE thread_id = $1"
_HEADS: Final = "SELECT thread_id, last_seq FROM streams WHERE thread_id = ANY($1::text[])"
#: The streams' locks (as ``_LOCK``) and the stored events of some ids, in one round trip:
#: a stream's row has no ``event_id`` and its ``last_seq`` in the ``seq`` column.
_LOCK_AND_LOOK_UP: Final = (
    f"WITH locked AS ({_LOCK}) "
    "SELECT thread_id, last_seq, NULL::text, NULL::text, NULL::text, NULL::text, "
    "NULL::float8, NULL::bytea FROM locked "
    f"UNION ALL SELECT {_COLUMNS} FROM events WHERE event_id = ANY($2::text[])"
)
#: The unique index on ``events.event_id`` (PostgreSQL's default name for the constraint).
_EVENT_ID_KEY: Final = "events_event_id_key"
#: Times an append is run again after another process stored one of its ids meanwhile.
_DUPLICATE_RETRIES: Final = 3
#: Events read per round trip when catching up with another process's commits.
_CATCH_UP_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class _Appended:
    """One ``append`` call's result: its events as stored, and which of them are new."""

    stored: list[StoredEvent]
    new: list[StoredEvent]


class PostgresLog:
    """An :class:`~agentcast.log.base.EventLog` in a PostgreSQL database.

    The database is owned by whoever created it (it is shared with the
    store): :meth:`open` opens it if needed, :meth:`close` ends followers
    and stops listening but leaves the database open.

    Args:
        db: The shared database.
        projector: Optional coroutine awaited in the append's transaction,
            once per merged call that stored something (the appends of
            one group, :meth:`PostgresLog.append`), with all their new events.
        tail_events_per_thread: Bound of the follow tail per thread.
        tail_threads: Bound of threads in the follow tail.
        info_threads: Bound of stream infos kept in memory.
        head_check_interval_s: Seconds between two checks of the followed
            threads' heads (bounds the delay of a lost notification).
    """

    name = "postgres"

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        projector: PostgresProjector | None = None,
        tail_events_per_thread: int = DEFAULT_TAIL_EVENTS,
        tail_threads: int = DEFAULT_TAIL_THREADS,
        info_threads: int = DEFAULT_INFO_THREADS,
        head_check_interval_s: float = 1.0,
    ) -> None:
        if info_threads < 1:
            raise ValueError("info_threads must be >= 1")
        if head_check_interval_s <= 0:
            raise ValueError("head_check_interval_s must be > 0")
        self._db = db
        self._projector = projector
        self._tail = Tail(tail_events_per_thread, tail_threads)
        self._heads = StreamHeads(info_threads)
        self._head_check_interval_s = head_check_interval_s
        self._closed = False
        self._in_flight: set[asyncio.Future[Any]] = set()
        #: What merges this log's appends in the writer (and nobody else's).
        self._batch_key = object()
        #: Live followers per thread: the threads whose foreign commits we fetch.
        self._followers: dict[str, weakref.WeakSet[StreamFollower]] = {}
        #: Foreign heads announced and not yet caught up with; ``_check_all``: a ``*``.
        self._dirty: dict[str, int] = {}
        self._check_all = False
        self._wake_catch_up = asyncio.Event()
        self._catch_up_task: asyncio.Task[None] | None = None
        self._listener: NotificationListener | None = None
        #: Durability mode for figures: the server's ``synchronous_commit``.
        self.durability: str = f"synchronous_commit={db.synchronous_commit}"
        db.before_commit(self._notify)

    # Public methods

    @property
    def db(self) -> PostgresDatabase:
        """The shared database."""
        return self._db

    @property
    def listener(self) -> NotificationListener | None:
        """The ``LISTEN`` connection's keeper, while open (for tests and health)."""
        return self._listener

    async def open(self) -> None:
        """Open the database if needed, start listening; accept calls again after ``close``.

        A second call while open is a no-op (a bridge opens the log it is
        given): starting again would leave the first listener running.
        """
        if self._listener is not None and not self._closed:
            return
        await self._db.open()
        self.durability = f"synchronous_commit={self._db.synchronous_commit}"
        self._tail.clear()
        self._heads.clear()
        self._tail.reopen()
        self._closed = False
        self._dirty.clear()
        self._check_all = False
        self._wake_catch_up = asyncio.Event()
        self._catch_up_task = asyncio.get_running_loop().create_task(
            self._catch_up_main(), name="agentcast-postgres-catch-up"
        )
        self._listener = NotificationListener(
            self._db.connect,
            where=self._db.url_masked,
            interval_s=self._head_check_interval_s,
            on_notify=self._on_notification,
            on_connected=self._on_listener_connected,
            on_tick=self._check_heads,
        )
        self._listener.start()

    async def close(self) -> None:
        """Finish appends already made, stop listening, then end every follower."""
        self._closed = True
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        task, self._catch_up_task = self._catch_up_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._followers.clear()
        self._tail.close()

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Durably append ``drafts`` in one transaction; see ``EventLog.append``.

        Raises:
            LogUnavailable: nothing was committed, or (the connection broke
                after ``COMMIT`` was sent) maybe it was; retrying is safe either way.
            AppendRejected: nothing was committed and retrying the same
                drafts would fail the same way.
        """
        self._check_open()
        if not drafts:
            return []
        batch = list(drafts)
        for attempt in range(_DUPLICATE_RETRIES + 1):
            try:
                return await self._append_once(batch)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != _EVENT_ID_KEY or attempt == _DUPLICATE_RETRIES:
                    error = _mapped(exc)
                    raise error from error.__cause__
                # Another process stored one of these ids since our look-up
                # (or a "fresh" id was not): look them all up this time.
                batch = [_not_fresh(d) for d in batch]
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` retained events with ``seq > after_seq``, in order."""
        self._check_open()
        if limit <= 0:
            return []

        async def op(conn: asyncpg.Connection) -> list[StoredEvent]:
            rows = await conn.fetch(_READ, thread_id, after_seq, limit)
            return [StoredEvent(*row) for row in rows]

        return await self._db.read(op)

    async def info(self, thread_id: str) -> StreamInfo:
        """The stream's epoch and retained range, creating the stream (and epoch) if new."""
        self._check_open()
        cached = self._heads.get(thread_id)
        if cached is not None:
            return cached
        return await self._look_up(thread_id)

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> StreamFollower:
        """Start following ``thread_id`` from the position, per ``resolve_start``.

        A position beyond the cached head, or another epoch, may only mean
        that another process moved the stream since we cached it: the row
        is read again before the position is declared lost.
        """
        info = await self.info(thread_id)
        if after_seq > info.last_seq or (epoch is not None and epoch != info.epoch):
            info = await self._look_up(thread_id)
        start = resolve_start(info, after_seq, epoch)
        follower = StreamFollower(
            thread_id, start, tail=self._tail, read=self.read, is_closed=self._is_closed
        )
        self._followers.setdefault(thread_id, weakref.WeakSet()).add(follower)
        return follower

    async def trim(self, thread_id: str, before_seq: int) -> int:
        """Delete events with ``seq < before_seq``; keep the epoch. Returns how many."""
        self._check_open()

        async def op(conn: asyncpg.Connection) -> tuple[int, int]:
            row = await conn.fetchrow(_STREAM + " FOR UPDATE", thread_id)
            if row is None:
                return 0, 0
            _, first_seq, last_seq = row
            cutoff = min(before_seq, last_seq + 1)
            if cutoff <= first_seq:
                return 0, 0
            status = await conn.execute(
                "DELETE FROM events WHERE thread_id = $1 AND seq < $2", thread_id, cutoff
            )
            await conn.execute(
                "UPDATE streams SET first_seq = $1 WHERE thread_id = $2", cutoff, thread_id
            )
            return int(status.split()[-1]), cutoff

        def on_commit(result: tuple[int, int]) -> None:
            if result[1]:
                self._tail.trim(thread_id, result[1])
                self._heads.trimmed(thread_id, result[1])

        deleted, _ = await self._write(op, on_commit)
        return int(deleted)

    async def settle(self) -> None:
        """Wait until the callbacks of every commit already begun have run (``EventLog.settle``)."""
        await self._db.settled()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Run ``listener(events)`` after each commit, before any follower sees the events.

        Events another process committed reach it too, when this process
        catches up with them (a thread followed here).
        """
        self._tail.add_commit_listener(listener)

    async def notification_queue_usage(self) -> float:
        """The fraction of the server's notification queue in use (``pg_notification_queue_usage``).

        Near 1 means a listener somewhere does not keep up (or sits in a long
        transaction): once full, every ``pg_notify`` — every append — fails.
        """

        async def op(conn: asyncpg.Connection) -> float:
            return float(await conn.fetchval("SELECT pg_notification_queue_usage()"))

        return await self._db.read(op)

    # Private methods: append

    async def _append_once(self, batch: list[EventDraft]) -> list[StoredEvent]:
        try:
            # Queued right here, not from a new task: one event-loop iteration
            # less between an append and its commit (the hot path).
            written = self._db.submit_batched(
                self._batch_key, batch, self._insert_batches, self._on_appended
            )
        except BaseException as exc:
            error = _mapped(exc)
            raise error from error.__cause__
        self._in_flight.add(written)
        # A callback, not code after the await: it runs even if the caller is cancelled.
        written.add_done_callback(partial(self._settled, batch))
        try:
            appended: _Appended = await written
        except asyncpg.UniqueViolationError:
            raise  # append() decides: another process's duplicate, or a rejection
        except BaseException as exc:
            if written.done() and not written.cancelled() and written.exception() is exc:
                error = _mapped(exc)
                raise error from error.__cause__
            raise
        return appended.stored

    async def _insert_batches(
        self, conn: asyncpg.Connection, batches: list[list[EventDraft]]
    ) -> list[_Appended]:
        """Store the drafts of several appends, each in its order, in one set of statements.

        As one append of all their drafts, in call order (so a thread's seqs
        are contiguous in call order), inside the writer's group transaction;
        each call gets back its own events. An id stored earlier in the
        batch is returned as stored, whoever submitted it.
        """
        known: dict[str, StoredEvent] = {}
        maybe_stored = list({d.event_id: None for b in batches for d in b if not d.fresh})
        threads = sorted({d.thread_id for b in batches for d in b})
        heads: dict[str, int] = {}
        # The common case (the bridge's drafts on their first attempt) has no id to
        # look up: lock the streams alone.
        rows = (
            await conn.fetch(_LOCK_AND_LOOK_UP, threads, maybe_stored)
            if maybe_stored
            else [(*row, None) for row in await conn.fetch(_LOCK, threads)]
        )
        for row in rows:
            if row[2] is None:
                heads[row[0]] = row[1]
            else:
                known[row[2]] = StoredEvent(*row)
        missing = [t for t in threads if t not in heads]
        if missing:
            await conn.execute(_CREATE, missing, [new_epoch() for _ in missing])
            heads.update(await conn.fetch(_LOCK, missing))
        appended: list[_Appended] = []
        new: list[StoredEvent] = []
        for drafts in batches:
            stored: list[StoredEvent] = []
            mine: list[StoredEvent] = []
            for draft in drafts:
                event = known.get(draft.event_id)
                if event is None:  # invariant 7: a known event_id is never stored twice
                    seq = heads[draft.thread_id] = heads[draft.thread_id] + 1
                    event = known[draft.event_id] = stored_event(draft, seq)
                    mine.append(event)
                stored.append(event)
            appended.append(_Appended(stored, mine))
            new.extend(mine)
        if new:
            moved = {e.thread_id: e.seq for e in new}
            await conn.execute(
                _INSERT_AND_SET_HEADS,
                [e.thread_id for e in new],
                [e.seq for e in new],
                [e.event_id for e in new],
                [e.run_id for e in new],
                [e.parent_run_id for e in new],
                [e.type for e in new],
                [e.ts for e in new],
                [e.raw for e in new],
                list(moved),
                list(moved.values()),
            )
            if self._projector is not None:
                # Invariant 3: the projection commits (or not) with the events.
                await self._projector(conn, new)
        return appended

    async def _notify(self, conn: asyncpg.Connection, results: list[Any]) -> None:
        """The group's one ``pg_notify``: the new head of every thread it appended to."""
        heads: dict[str, int] = {}
        for result in results:
            if isinstance(result, _Appended):
                for event in result.new:
                    heads[event.thread_id] = event.seq
        if heads:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload_for(heads))

    def _on_appended(self, appended: _Appended) -> None:
        # Runs after COMMIT returned (invariant 2), even if the caller was cancelled.
        if appended.new:
            self._heads.advance(appended.new)
            self._tail.publish(appended.new)

    def _settled(self, batch: list[EventDraft], written: asyncio.Future[Any]) -> None:
        """One append resolved: forget it; if its outcome is unknown, re-read its threads."""
        self._in_flight.discard(written)
        if not written.cancelled() and isinstance(written.exception(), WriteOutcomeUnknown):
            self._resync({draft.thread_id: None for draft in batch})

    def _resync(self, thread_ids: Iterable[str]) -> None:
        """Forget what we hold about threads whose write may have committed unseen.

        The next ``info`` and every follower then go to the database; waking
        the followers lets them find such events now.
        """
        threads = list(thread_ids)
        for thread_id in threads:
            self._heads.forget(thread_id)
            self._tail.forget(thread_id)
        for thread_id in threads:
            self._tail.notify(thread_id)

    async def _write(
        self,
        op: Callable[[asyncpg.Connection], Awaitable[Any]],
        on_commit: Callable[[Any], None] | None = None,
    ) -> Any:
        try:
            return await self._db.write(op, on_commit)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LogUnavailable(f"write failed: {exc!r}") from exc

    async def _look_up(self, thread_id: str) -> StreamInfo:
        """Read (or create) the stream row; merge commits that land meanwhile; cache it."""

        async def lookup(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(_STREAM, thread_id)

        async def create(conn: asyncpg.Connection) -> Any:
            await conn.execute(_CREATE, [thread_id], [new_epoch()])
            return await conn.fetchrow(_STREAM, thread_id)

        with self._heads.lookup(thread_id) as pending:
            row = await self._db.read(lookup)
            if row is None:
                row = await self._write(create)
        epoch, first_seq, last_seq = row
        info = StreamInfo(epoch, first_seq, last_seq)
        cached = self._heads.infos.get(thread_id)
        if cached is not None and cached.epoch != epoch:
            self._heads.forget(thread_id)  # never merge heads of two epochs
        return self._heads.looked_up(thread_id, pending, info)

    # Private methods: other processes' commits

    def _followed(self) -> list[str]:
        """Threads with a live follower here (closed followers are dropped)."""
        threads: list[str] = []
        for thread_id, followers in list(self._followers.items()):
            if any(not f.closed for f in followers):
                threads.append(thread_id)
            else:
                del self._followers[thread_id]
        return threads

    def _known_head(self, thread_id: str) -> int | None:
        """The last seq this process holds for ``thread_id`` (tail or head cache), if any."""
        known = [self._tail.head(thread_id)]
        cached = self._heads.infos.get(thread_id)
        if cached is not None:
            known.append(cached.last_seq)
        heads = [h for h in known if h is not None]
        return max(heads) if heads else None

    def _on_notification(self, payload: str) -> None:
        heads = parse_payload(payload)
        if heads is None:
            self._check_all = True
        else:
            for thread_id, seq in heads.items():
                if seq > self._dirty.get(thread_id, 0):
                    self._dirty[thread_id] = seq
        self._wake_catch_up.set()

    def _on_listener_connected(self) -> None:
        """Notifications sent while nobody listened are lost: check every followed thread."""
        self._check_all = True
        self._wake_catch_up.set()

    async def _check_heads(self) -> None:
        """One query for the heads of every followed thread (bounds a lost notification)."""
        threads = self._followed()
        if not threads or self._closed:
            return

        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(_HEADS, threads))

        for thread_id, seq in await self._db.read(op):
            known = self._known_head(thread_id)
            if known is None or seq > known:
                self._dirty[thread_id] = max(seq, self._dirty.get(thread_id, 0))
        if self._dirty:
            self._wake_catch_up.set()

    async def _catch_up_main(self) -> None:
        """Fetch what other processes committed to threads held here, one thread at a time."""
        while True:
            await self._wake_catch_up.wait()
            self._wake_catch_up.clear()
            if self._check_all:
                self._check_all = False
                try:
                    await self._check_heads()
                except Exception:
                    logger.exception("the head check after a lost notification failed")
                    self._check_all = True
            dirty, self._dirty = self._dirty, {}
            for thread_id, seq in dirty.items():
                try:
                    await self._catch_up(thread_id, seq)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The next head check finds the thread behind again.
                    logger.warning("catching up with thread %s failed: %r", thread_id, exc)

    async def _catch_up(self, thread_id: str, head: int) -> None:
        """Publish ``thread_id``'s events up to ``head`` that this process has not seen.

        Read once after what the tail holds (or the cached head) and
        published to the tail, which every follower here shares.
        """
        if self._closed:
            return
        tail_head = self._tail.head(thread_id)
        cached = self._heads.infos.get(thread_id)
        if thread_id not in self._followers and tail_head is None:
            # Nobody here reads it: moving the cached head is enough.
            if cached is not None and cached.last_seq < head:
                self._heads.remember(thread_id, StreamInfo(cached.epoch, cached.first_seq, head))
            return
        known = tail_head if tail_head is not None else None if cached is None else cached.last_seq
        if known is None:
            self._tail.notify(thread_id)  # nothing held here: followers read the database
            return
        while known < head and not self._closed:
            events = await self.read(thread_id, known, _CATCH_UP_LIMIT)
            if not events:
                break
            if events[0].seq != known + 1:  # trimmed meanwhile: followers report the loss
                self._tail.forget(thread_id)
                self._tail.notify(thread_id)
                return
            fresh = [e for e in events if e.seq > (self._tail.head(thread_id) or 0)]
            if fresh:
                self._heads.advance(fresh)
                self._tail.publish(fresh)
            known = events[-1].seq
            if len(events) < _CATCH_UP_LIMIT:
                break

    # Private methods: state

    def _is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LogUnavailable("log closed")

    @property
    def _infos(self) -> OrderedDict[str, StreamInfo]:
        """The cached stream infos, least recently used first (for tests)."""
        return self._heads.infos


def _not_fresh(draft: EventDraft) -> EventDraft:
    if not draft.fresh:
        return draft
    return EventDraft(
        event_id=draft.event_id,
        thread_id=draft.thread_id,
        run_id=draft.run_id,
        parent_run_id=draft.parent_run_id,
        type=draft.type,
        ts=draft.ts,
        agent=draft.agent,
        data=draft.data,
    )


def _as_log(exc: BaseException) -> BaseException:
    """What one append call's failure means to its caller: retry it, or give it up.

    ``LogUnavailable`` (retry) for an outage or a serialization failure (by
    SQLSTATE class, :func:`agentcast.db.postgres.classify`) and for the
    group's own failures (already a ``LogUnavailable``). ``AppendRejected``
    for what a retry would meet again: a constraint, a bad value, any other
    server error about the statement, or a non-database exception (the
    projector's, an event that cannot be encoded). The bridge retries a
    ``LogUnavailable`` for ever, so getting this wrong stalls every run
    behind one bad event. Cancellation and exits pass unchanged.
    """
    if isinstance(exc, LogUnavailable | AppendRejected):
        return exc
    if not isinstance(exc, Exception):
        return exc
    error: Exception
    if classify(exc) == "op":
        error = AppendRejected(f"the append was rejected: {exc!r}")
    else:
        error = LogUnavailable(f"append failed: {exc!r}")
    error.__cause__ = exc
    return error


def _mapped(exc: BaseException) -> BaseException:
    """``exc`` as :func:`_as_log` maps it, with ``exc`` as its cause (never its own)."""
    error = _as_log(exc)
    if error is not exc and error.__cause__ is None:
        error.__cause__ = exc
    return error


if TYPE_CHECKING:  # mypy proves the backend satisfies the protocol

    def _check(log: PostgresLog) -> EventLog:
        return log
