"""The PostgreSQL store: threads, runs and messages beside the PostgreSQL event log.

The same records and answers as :class:`~agentcast.store.sqlite.SqliteStore`,
on the tables of ``db/migrations/postgres/0002_store.sql``. Writes go through
:meth:`PostgresDatabase.write`, so they share the log's single writer
connection and group commit; :meth:`PostgresStore.project` runs inside the
append's own transaction, which is what makes a run's stored status commit
together with its terminal event (docs/architecture.md invariant 3).

What differs from SQLite is that several processes may share the database:

* ``create_run`` relies on the unique index, not on a read before the insert:
  ``INSERT … ON CONFLICT DO NOTHING`` then a read of the winner, so two
  processes racing with one idempotency key record one run;
* queue positions come from the ``run_queue_pos`` sequence instead of a
  counter kept in memory (gaps are fine: only their order is used);
* every op may run more than once (a retried group), so none of them changes
  anything outside its transaction; the owner cache is filled from results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..agents.history import TURN_EVENT_TYPES, TurnBuilder, turn_chars, turns_that_fit
from ..errors import NotFound
from ..events import EventType
from ..log.base import StoredEvent
from ..types import is_internal_thread, new_thread_id
from .base import (
    MessageRecord,
    NewRun,
    RunProjection,
    RunRecord,
    RunSpan,
    RunStatus,
    ThreadRecord,
    project_batch,
)
from .owners import ThreadOwners

if TYPE_CHECKING:
    import asyncpg

    from ..db.postgres import PostgresDatabase

__all__ = ["PostgresStore"]

_RUN_COLUMNS: Final = (
    "run_id, thread_id, user_id, agent, input, parent_run_id, status, created_at, started_at, "
    "ended_at, first_seq, last_seq, output, error, idempotency_key, queue_pos"
)
_THREAD_COLUMNS: Final = "thread_id, user_id, title, last_agent, created_at, updated_at"
_MESSAGE_COLUMNS: Final = "message_id, thread_id, run_id, role, content, created_at"

#: A new run; with a key, a conflict on ``runs_idempotency`` (another op or
#: another process used the key first) inserts nothing and returns no row.
#: ``queue_pos`` is the column default, ``nextval('run_queue_pos')``.
_INSERT_RUN: Final = (
    f"INSERT INTO runs ({_RUN_COLUMNS.removesuffix(', queue_pos')}) "
    "VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, NULL, NULL, NULL, NULL, NULL, NULL, $8) "
)
_ON_KEY_CONFLICT: Final = (
    "ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
)

#: A top-level run's user message and its thread's last agent, in one round trip.
_RECORD_USER_MESSAGE: Final = (
    "WITH message AS ("
    f"  INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ($1, $2, $3, 'user', $4, $5)"
    ") UPDATE threads SET last_agent = $6, updated_at = $5 WHERE thread_id = $2"
)

#: Every run a batch touches, in one statement: the same changes, in the same
#: cases, as SqliteStore.project's UPDATEs (``started`` moves only a queued
#: run to running; a terminal event sets the outcome). SET expressions read
#: the row as it was, so ``r.status = 'queued'`` is the status before this
#: batch. Returns what the turn of an ended top-level run is built from.
_PROJECT: Final = """
WITH change AS (
    SELECT * FROM unnest(
        $1::text[], $2::bigint[], $3::double precision[], $4::bigint[],
        $5::text[], $6::double precision[], $7::text[], $8::text[], $9::boolean[]
    ) AS c(run_id, last_seq, started_at, first_seq, status, ended_at, output, error, turn)
), updated AS (
    UPDATE runs AS r SET
        last_seq = c.last_seq,
        status = CASE
            WHEN c.status IS NOT NULL THEN c.status
            WHEN c.started_at IS NOT NULL AND r.status = 'queued' THEN 'running'
            ELSE r.status END,
        started_at = CASE
            WHEN c.started_at IS NOT NULL AND r.status = 'queued' THEN c.started_at
            ELSE r.started_at END,
        first_seq = CASE
            WHEN c.status IS NOT NULL
              OR (c.started_at IS NOT NULL AND r.status = 'queued')
            THEN COALESCE(r.first_seq, c.first_seq)
            ELSE r.first_seq END,
        ended_at = CASE WHEN c.status IS NOT NULL THEN c.ended_at ELSE r.ended_at END,
        output = CASE WHEN c.status IS NOT NULL THEN c.output ELSE r.output END,
        error = CASE WHEN c.status IS NOT NULL THEN c.error ELSE r.error END
    FROM change AS c
    WHERE r.run_id = c.run_id
    RETURNING r.run_id, r.thread_id, r.input, r.queue_pos, r.first_seq, c.turn
)
SELECT run_id, thread_id, input, queue_pos, first_seq FROM updated WHERE turn
"""

#: The events a turn is built from (SqliteStore's _store_turn, in one query):
#: the run's tool calls and answers between its first and its terminal event,
#: and its text where it can matter — all of it for a run that did not
#: complete ($5 false), only what came before its last tool call otherwise
#: (its answer is ``final_response``).
_TURN_EVENTS: Final = """
SELECT seq, type, raw FROM events
WHERE thread_id = $1 AND seq >= $2 AND seq < $3 AND run_id = $4
  AND (type IN ('tool_executing', 'tool_completed')
       OR (type = 'text_delta' AND seq < CASE WHEN $5::boolean THEN (
               SELECT COALESCE(MAX(seq), 0) FROM events
               WHERE thread_id = $1 AND seq >= $2 AND seq < $3 AND run_id = $4
                 AND type = 'tool_executing')
           ELSE $3 END))
ORDER BY seq
"""

_INSERT_TURN: Final = (
    "INSERT INTO turns (run_id, thread_id, queue_pos, chars, messages) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO UPDATE SET "
    "thread_id = EXCLUDED.thread_id, queue_pos = EXCLUDED.queue_pos, "
    "chars = EXCLUDED.chars, messages = EXCLUDED.messages"
)


def _run(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[6] = RunStatus(values[6])
    return RunRecord(*values)


class PostgresStore:
    """Threads, runs and messages in PostgreSQL, scoped by user."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        # thread_id -> owner: an owner never changes and threads are never
        # re-created under the same id, so a cached answer cannot go stale,
        # not even when another process shares the database.
        self._owners = ThreadOwners()

    async def open(self) -> None:
        """The database is opened by its owner (the engine); nothing else to do."""

    async def close(self) -> None:
        """The database is closed by its owner."""

    async def create_thread(self, user_id: str, title: str = "") -> ThreadRecord:
        now = time.time()
        record = ThreadRecord(new_thread_id(), user_id, title, None, now, now)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO threads ({_THREAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                record.thread_id, user_id, title, None, now, now,
            )  # fmt: skip

        await self._db.write(op)
        self._owners.remember(record.thread_id, user_id)
        return record

    async def get_thread(self, user_id: str, thread_id: str) -> ThreadRecord:
        async def op(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE thread_id = $1 AND user_id = $2",
                thread_id,
                user_id,
            )

        row = await self._db.read(op)
        if row is None:
            raise NotFound("thread not found")
        self._owners.remember(thread_id, user_id)
        return ThreadRecord(*row)

    async def check_thread(self, user_id: str, thread_id: str) -> None:
        await self._owners.check(user_id, thread_id, lambda: self.get_thread(user_id, thread_id))

    async def list_threads(
        self, user_id: str, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[ThreadRecord]:
        async def op(conn: asyncpg.Connection) -> list[Any]:
            if before is None:
                return list(
                    await conn.fetch(
                        f"SELECT {_THREAD_COLUMNS} FROM threads WHERE user_id = $1 "
                        "ORDER BY updated_at DESC, thread_id DESC LIMIT $2",
                        user_id,
                        limit,
                    )
                )
            return list(
                await conn.fetch(
                    f"SELECT {_THREAD_COLUMNS} FROM threads WHERE user_id = $1 "
                    "AND (updated_at, thread_id) < ($2, $3) "
                    "ORDER BY updated_at DESC, thread_id DESC LIMIT $4",
                    user_id,
                    before[0],
                    before[1],
                    limit,
                )
            )

        return [ThreadRecord(*row) for row in await self._db.read(op)]

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        select_by_key = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE user_id = $1 AND idempotency_key = $2"
        )

        async def op(conn: asyncpg.Connection) -> tuple[Any, bool]:
            owner = await conn.fetchval(
                "SELECT 1 FROM threads WHERE thread_id = $1 AND user_id = $2",
                run.thread_id,
                run.user_id,
            )
            if owner is None:
                raise NotFound("thread not found")
            now = time.time()
            args = (
                run.run_id, run.thread_id, run.user_id, run.agent, run.input, run.parent_run_id,
                now, run.idempotency_key,
            )  # fmt: skip
            if run.idempotency_key is None:
                row = await conn.fetchrow(f"{_INSERT_RUN}RETURNING {_RUN_COLUMNS}", *args)
            else:
                row = await conn.fetchrow(
                    f"{_INSERT_RUN}{_ON_KEY_CONFLICT}RETURNING {_RUN_COLUMNS}", *args
                )
                if row is None:
                    # The key was used first, by an earlier op of this group or
                    # by a transaction the insert waited for (committed by now,
                    # so visible to this new statement: read committed).
                    existing = await conn.fetchrow(select_by_key, run.user_id, run.idempotency_key)
                    return existing, False
            if run.parent_run_id is None:
                await conn.execute(
                    _RECORD_USER_MESSAGE,
                    f"msg_{run.run_id}_user", run.thread_id, run.run_id, run.input, now,
                    run.agent,
                )  # fmt: skip
            return row, True

        row, created = await self._db.write(op)
        return _run(row), created

    async def get_run(self, user_id: str, run_id: str) -> RunRecord:
        record = await self.find_run(run_id)
        if record is None or record.user_id != user_id:
            raise NotFound("run not found")
        return record

    async def find_run(self, run_id: str) -> RunRecord | None:
        async def op(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)

        row = await self._db.read(op)
        return None if row is None else _run(row)

    async def find_run_by_key(self, user_id: str, idempotency_key: str) -> RunRecord | None:
        async def op(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE user_id = $1 AND idempotency_key = $2",
                user_id,
                idempotency_key,
            )

        row = await self._db.read(op)
        return None if row is None else _run(row)

    async def active_runs(self) -> list[RunRecord]:
        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running') "
                    "ORDER BY queue_pos"
                )
            )

        return [_run(row) for row in await self._db.read(op)]

    async def list_runs(self, user_id: str, thread_id: str) -> list[RunRecord]:
        await self.get_thread(user_id, thread_id)

        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE thread_id = $1 ORDER BY queue_pos",
                    thread_id,
                )
            )

        return [_run(row) for row in await self._db.read(op)]

    async def list_messages(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        await self.get_thread(user_id, thread_id)

        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 "
                    "ORDER BY created_at, message_id",
                    thread_id,
                )
            )

        return [MessageRecord(*row) for row in await self._db.read(op)]

    async def thread_ids(self, after: str | None = None, limit: int = 1000) -> list[str]:
        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    "SELECT thread_id FROM threads WHERE thread_id > $1 "
                    "ORDER BY thread_id LIMIT $2",
                    "" if after is None else after,
                    limit,
                )
            )

        return [row[0] for row in await self._db.read(op)]

    async def history(
        self, thread_id: str, before_pos: int, max_turns: int, max_tokens: int
    ) -> list[list[dict[str, Any]]]:
        async def op(conn: asyncpg.Connection) -> list[Any]:
            # Sizes first, from the covering index; then only the turns that fit.
            sizes = await conn.fetch(
                "SELECT run_id, chars FROM turns WHERE thread_id = $1 AND queue_pos < $2 "
                "ORDER BY queue_pos DESC LIMIT $3",
                thread_id,
                before_pos,
                max(max_turns, 0),
            )
            fit = turns_that_fit([row[1] for row in sizes], max_turns, max_tokens)
            keep = [row[0] for row in sizes[:fit]]
            if not keep:
                return []
            return list(
                await conn.fetch(
                    "SELECT messages FROM turns WHERE run_id = ANY($1::text[]) ORDER BY queue_pos",
                    keep,
                )
            )

        return [json.loads(row[0]) for row in await self._db.read(op)]

    async def run_spans(self, thread_id: str, from_seq: int = 1) -> list[RunSpan]:
        async def op(conn: asyncpg.Connection) -> list[Any]:
            # The runs_thread index finds the thread's runs; the filter keeps
            # only those that can still have retained events.
            return list(
                await conn.fetch(
                    "SELECT run_id, parent_run_id, status, first_seq, last_seq FROM runs "
                    "WHERE thread_id = $1 AND (status IN ('queued', 'running') OR last_seq >= $2) "
                    "ORDER BY queue_pos",
                    thread_id,
                    from_seq,
                )
            )

        return [
            RunSpan(run_id, parent, RunStatus(status), first, last)
            for run_id, parent, status, first, last in await self._db.read(op)
        ]

    async def project(self, conn: asyncpg.Connection, events: Sequence[StoredEvent]) -> None:
        """Apply a committed batch to its runs, inside the append's transaction.

        One statement for every run the batch touches (the hot path: a round
        trip per run would hold the shared writer), then, for each top-level
        run it ended, its assistant message and its turn. Internal streams
        (health canaries) have no runs and are skipped. Like every op, this
        may run again in a retried group, so it only writes through ``conn``.
        """
        changes = project_batch([e for e in events if not is_internal_thread(e.thread_id)])
        if not changes:
            return
        # A fixed lock order, so two processes projecting overlapping runs
        # (a run adopted after a crash) cannot deadlock each other.
        changes.sort(key=lambda change: change.run_id)
        ended = await conn.fetch(
            _PROJECT,
            [c.run_id for c in changes],
            [c.last_seq for c in changes],
            [c.started_at for c in changes],
            [c.first_seq for c in changes],
            [None if c.status is None else c.status.value for c in changes],
            [c.ended_at for c in changes],
            [c.output for c in changes],
            [c.error for c in changes],
            [c.status is not None and not c.is_sub_run for c in changes],
        )
        if not ended:
            return
        by_run = {c.run_id: c for c in changes}
        terminals = {(e.thread_id, e.seq): e for e in events}
        messages: list[tuple[Any, ...]] = []
        turns: list[tuple[Any, ...]] = []
        for run_id, thread_id, user_message, queue_pos, first_seq in ended:
            change = by_run[run_id]
            if change.output is not None:
                messages.append(
                    (
                        f"msg_{run_id}_assistant", thread_id, run_id, "assistant", change.output,
                        change.ended_at or time.time(),
                    )
                )  # fmt: skip
            terminal = terminals[(change.thread_id, change.last_seq)]
            turn = await _build_turn(conn, change, terminal, user_message, first_seq)
            encoded = json.dumps(turn, ensure_ascii=False)
            turns.append((run_id, thread_id, queue_pos, turn_chars(turn), encoded))
        if messages:
            await conn.executemany(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                messages,
            )
        await conn.executemany(_INSERT_TURN, turns)


async def _build_turn(
    conn: asyncpg.Connection,
    change: RunProjection,
    terminal: StoredEvent,
    user_message: str,
    first_seq: int | None,
) -> list[dict[str, Any]]:
    """An ended top-level run's turn, in its terminal event's transaction.

    Built once per run from the run's events still in the log (retention never
    trims an active run's events, and this batch's rows are already inserted),
    as SqliteStore's ``_store_turn`` does: the hot path of a run pays nothing,
    and a run ended by recovery after a restart is stored by the same code.
    ``terminal`` is the batch's event at the run's ``last_seq``, which is the
    row SQLite reads back.
    """
    rows = await conn.fetch(
        _TURN_EVENTS,
        change.thread_id,
        first_seq or change.last_seq,
        change.last_seq,
        change.run_id,
        terminal.type == EventType.AGENT_COMPLETED,
    )
    builder = TurnBuilder(user_message)
    for seq, kind, raw in rows:
        if kind in TURN_EVENT_TYPES:
            builder.add(seq, kind, bytes(raw))
    return builder.finish(terminal.type, terminal.raw)
