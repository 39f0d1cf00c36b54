"""PostgreSQL access shared by the log and the store: a read pool and one group-commit writer.

The SQLite database (:mod:`agentcast.db.sqlite`) has one writer thread; this
is its PostgreSQL counterpart with the same semantics, so the log and the
store behave alike on both:

* **Group commit on one connection.** Every write of the process is an op
  (``async def op(conn) -> T``) queued to one writer task with its own
  connection (not from the pool). The task takes everything queued while the
  previous transaction was in flight (at most :data:`MAX_GROUP_OPS`) and runs
  it in ONE ``BEGIN … COMMIT``, then the ``before_commit`` hooks (the log's
  single ``pg_notify`` per group). ``synchronous_commit`` stays on: N
  concurrent appends share one WAL flush.
* **Durable before visible.** ``on_commit(result)`` runs on the loop only
  after ``COMMIT`` returned, before the op's future resolves and even if its
  caller was cancelled, so in-memory state (the log's tail) never misses a
  committed write.
* **An op that raises fails alone.** There is no savepoint per op (a round
  trip each on the hot path): the group is rolled back and the other ops run
  again in a new transaction. So an op may run more than once and must have
  no effect outside its transaction except through its return value.
* **Mergeable ops.** Round trips on the one connection, not the server,
  bound a group of many small ops (the log's one-event appends: two
  statements each). :meth:`PostgresDatabase.submit_batched` queues an
  *item* under a *key*; the items of one key queued one after the other
  (nothing else between them, so the order of every write is kept) run in
  ONE call ``run_batch(conn, items)`` that returns one result per item. If
  that call raises an op's error nobody can tell which item caused it: the
  group is rolled back and run again with those items one by one (each its
  own single-item batch), so the culprit fails alone as any op does.
* **Errors by SQLSTATE class.** ``40001``/``40P01`` (serialization failure,
  deadlock): the whole group is retried, a bounded number of times. Class
  ``08``, ``53``, ``57P01`` to ``57P03`` and broken connections: an outage — the
  group's ops get :class:`~agentcast.errors.LogUnavailable` (or
  :class:`~agentcast.db.writer.WriteOutcomeUnknown` when the connection broke
  after ``COMMIT`` was sent: it may have committed), the writer reconnects,
  with backoff while the server stays away, and later writes work again.
  Anything else an op raises (a constraint, a bad value, a Python exception)
  is that op's own failure, handed to it unchanged.

The schema is never changed here: :meth:`PostgresDatabase.open` refuses a
database whose schema version is not this code's (:mod:`agentcast.db.pg_migrate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

import asyncpg

from ..dsn import mask_dsn
from ..errors import LogUnavailable
from .barrier import CommitBarrier
from .pg_epochs import check_identity
from .pg_migrate import SchemaOutdated, check_schema
from .writer import MAX_GROUP_OPS, WriteOutcomeUnknown

__all__ = [
    "MAX_GROUP_OPS",
    "MAX_GROUP_RETRIES",
    "SERVER_SETTINGS",
    "BeforeCommit",
    "Op",
    "PgWriteStats",
    "PostgresDatabase",
    "RunBatch",
    "SchemaOutdated",
    "WriteOutcomeUnknown",
    "classify",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: One unit of work on a connection (the writer's, inside the group transaction, or a reader's).
Op = Callable[[asyncpg.Connection], Awaitable[T]]
#: Run once per group inside its transaction, after every op, with their results.
BeforeCommit = Callable[[asyncpg.Connection, list[Any]], Awaitable[None]]
#: Runs many queued items of one key in one call: one result per item, in order.
RunBatch = Callable[[asyncpg.Connection, list[Any]], Awaitable[list[Any]]]

#: Times a group is run again after a serialization failure or a deadlock.
MAX_GROUP_RETRIES: Final = 5
#: Reconnection backoff of the writer while the server stays away (seconds).
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
#: SQLSTATEs of an outage besides classes 08 and 53 (shutdowns, cannot connect now).
_OUTAGE_STATES: Final = frozenset({"57P01", "57P02", "57P03"})
_RETRY_STATES: Final = frozenset({"40001", "40P01"})

Kind = Literal["retry", "outage", "op"]

#: Set on every connection. asyncpg prepares each statement, and after five runs
#: PostgreSQL may keep a *generic* plan chosen while the tables were empty: a
#: sequential scan of ``events`` for ``event_id = ANY($1)``, kept as the table
#: grows until statistics change (never, where autovacuum is off). Planning
#: with the actual parameters costs a fraction of a millisecond per statement
#: and keeps every look-up on its index.
SERVER_SETTINGS: Final[dict[str, str]] = {"plan_cache_mode": "force_custom_plan"}


def classify(exc: BaseException, conn: asyncpg.Connection | None = None) -> Kind:
    """What a failure means for the group: retry it, an outage, or the op's own error.

    ``conn`` (the connection it happened on): an error that left it closed is
    an outage whatever its type.
    """
    if isinstance(exc, asyncpg.PostgresConnectionError | OSError | TimeoutError):
        return "outage"
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        if state in _RETRY_STATES:
            return "retry"
        if state.startswith(("08", "53")) or state in _OUTAGE_STATES:
            return "outage"
    if conn is not None and conn.is_closed():
        return "outage"
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return "outage"
    return "op"


@dataclass(slots=True)
class PgWriteStats:
    """Counters of the writer, for metrics and for tests that prove grouping."""

    groups_committed: int = 0
    ops_committed: int = 0
    #: Groups whose ops all failed (an outage, retries exhausted).
    groups_failed: int = 0
    #: Group transactions run again (a serialization failure, a deadlock, or an op that raised).
    groups_retried: int = 0
    #: Ops that failed alone (their own error) while the rest of their group went on.
    ops_failed: int = 0
    #: Times the writer connection was lost.
    outages: int = 0
    #: Times a new writer connection was opened after one was lost.
    reconnects: int = 0
    #: Calls of a ``run_batch`` (each runs one or more mergeable items).
    batches_run: int = 0
    #: Mergeable items handed to those calls (``batched_items / batches_run``: the merge).
    batched_items: int = 0
    #: Merged calls that raised an op's error, whose items then ran one by one.
    batches_split: int = 0


class _WriteOp(NamedTuple):
    #: A plain op, or ``None`` for a mergeable item (``key``, ``item``, ``run_batch``).
    fn: Op[Any] | None
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None
    key: object = None
    item: Any = None
    run_batch: RunBatch | None = None


class _Outage(Exception):
    """The group failed as a whole: ``unknown``, after ``COMMIT`` was sent.

    ``lost``: the connection failed (it is dropped and the writer
    reconnects); otherwise the group's own statements did (a hook, a deferred
    constraint at ``COMMIT``) and the connection is kept.
    """

    def __init__(self, cause: BaseException, *, unknown: bool = False, lost: bool = True) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.unknown = unknown
        self.lost = lost


_STOP: Final = object()


class PostgresDatabase:
    """A PostgreSQL database: a pool for reads and one writer connection with group commit.

    Args:
        url: A ``postgresql://`` URL (shown only masked).
        pool_max_size: Connections of the read pool.
        connect_timeout_s: Bound of each connection attempt and pool acquire.
    """

    def __init__(
        self, url: str, *, pool_max_size: int = 10, connect_timeout_s: float = 10.0
    ) -> None:
        if pool_max_size < 1:
            raise ValueError("pool_max_size must be >= 1")
        self._url = url
        self.url_masked: str = mask_dsn(url)
        self._pool_max_size = pool_max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._conn: asyncpg.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._is_open = False
        self._accepting = False
        self._queue: deque[_WriteOp | object] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._hooks: list[BeforeCommit] = []
        self._next_connect = 0.0
        self._backoff = _BACKOFF_MIN_S
        self._commits = CommitBarrier()
        self.stats = PgWriteStats()
        #: The server's ``synchronous_commit`` (read at open), named in every figure.
        self.synchronous_commit: str = "on"
        #: The schema version found at open.
        self.schema_version: int = 0
        #: Why every stream got a new epoch at the last open (``None``: none did).
        self.rotation: str | None = None
        #: How many streams got a new epoch at the last open.
        self.streams_rotated: int = 0

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.url_masked!r})"

    # Public methods

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not run."""
        return self._is_open

    @property
    def writer_pid(self) -> int | None:
        """The server process of the writer connection, if connected (for tests and logs)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    @property
    def writer_connected(self) -> bool:
        """Whether the writer holds a live connection now (false during an outage)."""
        return self._conn is not None and not self._conn.is_closed()

    async def open(self, *, rotate_epochs: bool = False) -> None:
        """Open the pool and the writer connection; check the schema. A second call is a no-op.

        Before anything is written, every stream gets a new epoch if the
        cluster is not the one last written to (a restore), or if
        ``rotate_epochs`` (``agentcast db rotate-epochs``): :mod:`agentcast.db.pg_epochs`.

        Raises:
            SchemaOutdated: the schema is missing or older (run ``agentcast db
                upgrade``), or newer than this code.
            LogUnavailable: the server cannot be reached.
        """
        async with self._open_lock:
            if self._is_open:
                return
            try:
                conn = await self._connect_writer()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise LogUnavailable(f"cannot connect to {self.url_masked}: {exc!r}") from exc
            try:
                self.schema_version = await check_schema(conn, self.url_masked)
                self.rotation, self.streams_rotated = await check_identity(
                    conn, rotate=rotate_epochs
                )
                self.synchronous_commit = str(await conn.fetchval("SHOW synchronous_commit"))
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=self._pool_max_size,
                    timeout=self._connect_timeout_s,
                    server_settings=SERVER_SETTINGS,
                )
            except BaseException as exc:
                await _close_conn(conn)
                if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError):
                    raise LogUnavailable(f"cannot open {self.url_masked}: {exc!r}") from exc
                raise
            self._conn = conn
            self._queue = deque()
            self._wakeup = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(
                self._writer_main(), name="agentcast-postgres-writer"
            )
            self._is_open = True
            self._accepting = True

    async def close(self) -> None:
        """Commit what is queued, then close the writer connection and the pool."""
        async with self._open_lock:
            if not self._is_open:
                return
            self._accepting = False
            self._is_open = False
            self._queue.append(_STOP)  # ops queued before it still commit
            self._wakeup.set()
            if self._writer is not None:
                await asyncio.shield(self._writer)
                self._writer = None
            self._commits.settle()
            conn, self._conn = self._conn, None
            if conn is not None:
                await _close_conn(conn)
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self._connect_timeout_s)
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pool.terminate()

    async def read(self, op: Op[T]) -> T:
        """Run ``op`` on a pool connection (autocommit: committed data only).

        Raises:
            LogUnavailable: the database is not open, or the server failed.
        """
        pool = self._pool
        if not self._accepting or pool is None:
            raise LogUnavailable(f"database {self.url_masked} is not open")
        try:
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                return await op(conn)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            raise LogUnavailable(f"read from {self.url_masked} failed: {exc!r}") from exc

    async def write(self, op: Op[T], on_commit: Callable[[T], None] | None = None) -> T:
        """Run ``op`` in the next group transaction of the writer (see the module docstring).

        Raises:
            LogUnavailable: not open, an outage, or retries exhausted (nothing committed);
                :class:`WriteOutcomeUnknown` when it may have committed.
            Exception: whatever ``op`` raised (only this op failed).
        """
        return await self.submit(op, on_commit)

    def submit(self, op: Op[T], on_commit: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Queue ``op`` for the next group now and return its future (see :meth:`write`).

        For the hot path: no event-loop iteration between the call and the queue.

        Raises:
            LogUnavailable: the database is not open.
        """
        if not self._accepting:
            raise LogUnavailable(f"database {self.url_masked} is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_WriteOp(op, future, cast("Callable[[Any], None] | None", on_commit)))
        self._wakeup.set()
        return future

    def submit_batched(
        self,
        key: object,
        item: Any,
        run_batch: RunBatch,
        on_commit: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a mergeable ``item`` now and return the future of its own result.

        The items of ``key`` queued one after the other run in one call
        ``run_batch(conn, items)`` (the same function for every item of a
        key), which must return one result per item, in order; each item
        then gets its result and its ``on_commit`` as an op would. The
        semantics are an op's (module docstring): ``run_batch`` may run more
        than once, and when it raises for several items they run again one
        by one, so that only the item at fault fails.

        Raises:
            LogUnavailable: the database is not open.
        """
        if not self._accepting:
            raise LogUnavailable(f"database {self.url_masked} is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_WriteOp(None, future, on_commit, key, item, run_batch))
        self._wakeup.set()
        return future

    def before_commit(self, hook: BeforeCommit) -> None:
        """Run ``hook(conn, results)`` once per group, in its transaction, after every op.

        ``results`` are the ops' results in group order (only ops that
        succeeded). A hook that raises fails the whole group (``LogUnavailable``).
        """
        self._hooks.append(hook)

    async def settled(self) -> None:
        """Wait until every group whose COMMIT has begun has had its callbacks run.

        As :meth:`SqliteDatabase.settled <agentcast.db.sqlite.SqliteDatabase.settled>`:
        a reader on the pool may see a commit a moment before its ``on_commit``
        callbacks ran; who learnt of it that way awaits this first.
        """
        await self._commits.wait()

    async def connect(self) -> asyncpg.Connection:
        """A new dedicated connection outside the pool (the log's ``LISTEN``); the caller closes it.

        Raises:
            OSError, TimeoutError, asyncpg.PostgresError: as ``asyncpg.connect``.
        """
        return await asyncpg.connect(
            self._url, timeout=self._connect_timeout_s, server_settings=SERVER_SETTINGS
        )

    # Seams (fault tests replace them)

    async def _connect_writer(self) -> asyncpg.Connection:
        """Open the writer's own connection."""
        return await self.connect()

    async def _commit(self, conn: asyncpg.Connection) -> None:
        """The group's ``COMMIT`` (its WAL flush)."""
        await conn.execute("COMMIT")

    # Private methods: the writer task

    async def _writer_main(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group: list[_WriteOp] = []
            stopping = False
            while self._queue and len(group) < MAX_GROUP_OPS:
                item = self._queue.popleft()
                if item is _STOP:
                    stopping = True
                    break
                group.append(cast(_WriteOp, item))
            if group:
                try:
                    await self._run_group(group)
                except BaseException as exc:
                    # Nothing else resolves these futures: without this they would hang.
                    logger.critical("the writer of %s failed", self.url_masked, exc_info=True)
                    for op in group:
                        _fail(
                            op.future,
                            WriteOutcomeUnknown(
                                f"the writer of {self.url_masked} failed ({exc!r}) with this "
                                "write in flight: it may or may not have committed; retry it"
                            ),
                            exc,
                        )
                    self._commits.settle()
                    if isinstance(exc, asyncio.CancelledError):
                        raise
            if stopping:
                return

    async def _writer_conn(self) -> asyncpg.Connection:
        """The writer's connection, reconnecting (with backoff) after an outage."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        now = time.monotonic()
        if now < self._next_connect:
            raise LogUnavailable(
                f"{self.url_masked} is unreachable; reconnecting in {self._next_connect - now:.2f}s"
            )
        try:
            conn = await self._connect_writer()
        except Exception as exc:
            self._next_connect = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
            logger.warning("cannot reconnect the writer to %s: %r", self.url_masked, exc)
            raise LogUnavailable(f"cannot connect to {self.url_masked}: {exc!r}") from exc
        self._conn = conn
        self._backoff = _BACKOFF_MIN_S
        self._next_connect = 0.0
        self.stats.reconnects += 1
        logger.warning("the writer reconnected to %s; writes are accepted again", self.url_masked)
        return conn

    async def _run_group(self, group: list[_WriteOp]) -> None:
        """Commit ``group`` (what can be), resolve every op, in op order."""
        outcomes: dict[int, tuple[bool, Any]] = {}
        pending = list(range(len(group)))
        #: Mergeable items that run one by one (a merged call of theirs raised).
        alone: set[int] = set()
        retries = 0
        while pending:
            try:
                conn = await self._writer_conn()
            except LogUnavailable as exc:
                self._fail_ops(group, pending, outcomes, exc)
                break
            try:
                results = await self._attempt(conn, group, pending, outcomes, alone)
            except _Outage as outage:
                if outage.lost:
                    self._lost(conn, outage.cause)
                error: LogUnavailable
                if outage.unknown:
                    error = WriteOutcomeUnknown(
                        f"the connection to {self.url_masked} broke after COMMIT was sent "
                        f"({outage.cause!r}): the write may or may not have committed; retry it"
                    )
                else:
                    error = LogUnavailable(
                        f"the write was not committed: {outage.cause!r}"
                        + (f" ({self.url_masked} failed)" if outage.lost else "")
                    )
                self._fail_ops(group, pending, outcomes, error, outage.cause)
                break
            except _Retry as retry:
                retries += 1
                self.stats.groups_retried += 1
                if retries > MAX_GROUP_RETRIES:
                    self._fail_ops(
                        group,
                        pending,
                        outcomes,
                        LogUnavailable(
                            f"the write was not committed after {retries} attempts: {retry.cause!r}"
                        ),
                        retry.cause,
                    )
                    break
                continue
            if results is None:  # an op failed alone, or a merged call split: run again
                self.stats.groups_retried += 1
                pending = [i for i in pending if i not in outcomes]
                continue
            for i, result in zip(pending, results, strict=True):
                outcomes[i] = (True, result)
            self.stats.groups_committed += 1
            self.stats.ops_committed += len(pending)
            break
        self._deliver(group, outcomes)

    async def _attempt(
        self,
        conn: asyncpg.Connection,
        group: list[_WriteOp],
        pending: list[int],
        outcomes: dict[int, tuple[bool, Any]],
        alone: set[int],
    ) -> list[Any] | None:
        """One transaction over the ``pending`` ops: their results, or ``None`` if one failed.

        A failing op's outcome is recorded in ``outcomes`` (a failing merged
        call's items go to ``alone`` instead) and the transaction is rolled
        back. Raises :class:`_Outage` or :class:`_Retry` for the group.
        """
        try:
            await conn.execute("BEGIN")
        except Exception as exc:
            raise self._group_error(conn, exc) from exc
        results: list[Any] = []
        for run in _runs(group, pending, alone):
            try:
                results.extend(await self._run(conn, group, run))
            except Exception as exc:
                kind = classify(exc, conn)
                if kind != "op":
                    await self._rollback(conn, exc)
                    raise (_Outage(exc) if kind == "outage" else _Retry(exc)) from exc
                if len(run) > 1:  # which item was it? Run each alone to find out.
                    alone.update(run)
                    self.stats.batches_split += 1
                else:
                    outcomes[run[0]] = (False, exc)
                    self.stats.ops_failed += 1
                await self._rollback(conn, exc)
                return None
        try:
            for hook in self._hooks:
                await hook(conn, results)
        except Exception as exc:
            await self._rollback(conn, exc)
            if classify(exc, conn) == "op":
                raise _Outage(exc, lost=False) from exc  # a hook: no single op to blame
            raise self._group_error(conn, exc) from exc
        self._commits.begun += 1  # before COMMIT: a reader may see it from then on
        try:
            await self._commit(conn)
        except Exception as exc:
            kind = classify(exc, conn)
            if kind == "outage":
                raise _Outage(exc, unknown=True) from exc
            await self._rollback(conn, exc)
            if kind == "retry":
                raise _Retry(exc) from exc
            raise _Outage(exc, lost=False) from exc  # e.g. a deferred constraint
        return results

    async def _run(
        self, conn: asyncpg.Connection, group: list[_WriteOp], run: list[int]
    ) -> list[Any]:
        """The results of one run of :func:`_runs`: a plain op, or one call for its items."""
        first = group[run[0]]
        if first.fn is not None:
            return [await first.fn(conn)]
        assert first.run_batch is not None
        self.stats.batches_run += 1
        self.stats.batched_items += len(run)
        results = await first.run_batch(conn, [group[i].item for i in run])
        if len(results) != len(run):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(run)} items")
        return results

    def _group_error(self, conn: asyncpg.Connection, exc: BaseException) -> Exception:
        """A failure of the group's own statements: a retry or an outage (never an op's)."""
        return _Retry(exc) if classify(exc, conn) == "retry" else _Outage(exc)

    async def _rollback(self, conn: asyncpg.Connection, cause: BaseException) -> None:
        """End the failed transaction; a rollback that fails means the connection is lost."""
        if conn.is_closed():
            return
        try:
            await conn.execute("ROLLBACK")
        except Exception as exc:
            logger.warning("rollback after %r failed: %r", cause, exc)
            raise _Outage(exc) from exc

    def _lost(self, conn: asyncpg.Connection, cause: BaseException) -> None:
        """Drop the writer connection after an outage; the next group reconnects."""
        self.stats.outages += 1
        logger.warning("the writer connection to %s failed: %r", self.url_masked, cause)
        if self._conn is conn:
            self._conn = None
        if not conn.is_closed():
            conn.terminate()

    def _fail_ops(
        self,
        group: list[_WriteOp],
        indexes: list[int],
        outcomes: dict[int, tuple[bool, Any]],
        error: LogUnavailable,
        cause: BaseException | None = None,
    ) -> None:
        remaining = [i for i in indexes if i not in outcomes]
        if remaining:
            self.stats.groups_failed += 1
        for i in remaining:
            copy = type(error)(str(error))
            copy.__cause__ = cause if cause is not None else error.__cause__
            outcomes[i] = (False, copy)

    def _deliver(self, group: list[_WriteOp], outcomes: dict[int, tuple[bool, Any]]) -> None:
        """Run commit callbacks, then resume each caller, in op order."""
        for i, op in enumerate(group):
            ok, value = outcomes[i]
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
        self._commits.settle()


class _Retry(Exception):
    """A serialization failure or a deadlock: run the whole group again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def _runs(group: list[_WriteOp], pending: list[int], alone: set[int]) -> list[list[int]]:
    """``pending`` cut into what runs in one call: a plain op, or adjacent items of one key.

    Only adjacent items merge, so every write keeps its place in the queue's
    order (an op between two appends still runs between them).
    """
    runs: list[list[int]] = []
    for i in pending:
        op = group[i]
        if runs and op.fn is None and i not in alone:
            last = group[runs[-1][-1]]
            if last.fn is None and last.key == op.key and runs[-1][-1] not in alone:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def _fail(future: asyncio.Future[Any], error: BaseException, cause: BaseException) -> None:
    if not future.done():
        error.__cause__ = cause
        future.set_exception(error)


async def _close_conn(conn: asyncpg.Connection) -> None:
    """Close a connection politely, or cut it if the server does not answer."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5.0)
        return
    conn.terminate()
