"""The SQLite store: threads, runs and messages in the log's database file.

All writes go through :meth:`SqliteDatabase.write`, so they share the log's
single writer and group commit; :meth:`SqliteStore.project` runs inside the
append's own transaction, which is what makes a run's stored status commit
together with its terminal event (docs/architecture.md invariant 3).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from ..agents.history import TURN_EVENT_TYPES, TurnBuilder, turn_chars, turns_that_fit
from ..db.sqlite import SqliteDatabase
from ..errors import NotFound
from ..log.base import StoredEvent
from ..types import is_internal_thread, new_thread_id
from .base import (
    MessageRecord,
    NewRun,
    RunRecord,
    RunSpan,
    RunStatus,
    ThreadRecord,
    project_batch,
)
from .owners import ThreadOwners

__all__ = ["SqliteStore"]

_RUN_COLUMNS: Final = (
    "run_id, thread_id, user_id, agent, input, parent_run_id, status, created_at, started_at, "
    "ended_at, first_seq, last_seq, output, error, idempotency_key, queue_pos"
)
_THREAD_COLUMNS: Final = "thread_id, user_id, title, last_agent, created_at, updated_at"
_MESSAGE_COLUMNS: Final = "message_id, thread_id, run_id, role, content, created_at"


def _run(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[6] = RunStatus(values[6])
    return RunRecord(*values)


class SqliteStore:
    """Threads, runs and messages in SQLite, scoped by user."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        # Next queue position; read once, then kept by the writer thread (all
        # writes run there one after another, so no lock is needed).
        self._next_pos: int | None = None
        # thread_id -> owner: an owner never changes and threads are never
        # re-created under the same id, so a cached answer cannot go stale.
        self._owners = ThreadOwners()

    async def open(self) -> None:
        """The database is opened by its owner (the engine); nothing else to do."""

    async def close(self) -> None:
        """The database is closed by its owner."""

    async def create_thread(self, user_id: str, title: str = "") -> ThreadRecord:
        now = time.time()
        record = ThreadRecord(new_thread_id(), user_id, title, None, now, now)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO threads ({_THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (record.thread_id, user_id, title, None, now, now),
            )

        await self._db.write(op)
        self._owners.remember(record.thread_id, user_id)
        return record

    async def get_thread(self, user_id: str, thread_id: str) -> ThreadRecord:
        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE thread_id = ? AND user_id = ?",
                (thread_id, user_id),
            ).fetchone()

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
        def op(conn: sqlite3.Connection) -> list[Any]:
            if before is None:
                return conn.execute(
                    f"SELECT {_THREAD_COLUMNS} FROM threads WHERE user_id = ? "
                    "ORDER BY updated_at DESC, thread_id DESC LIMIT ?",
                    (user_id, limit),
                ).fetchall()
            return conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE user_id = ? "
                "AND (updated_at, thread_id) < (?, ?) "
                "ORDER BY updated_at DESC, thread_id DESC LIMIT ?",
                (user_id, before[0], before[1], limit),
            ).fetchall()

        return [ThreadRecord(*row) for row in await self._db.read(op)]

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        def op(conn: sqlite3.Connection) -> tuple[Any, bool]:
            owner = conn.execute(
                "SELECT 1 FROM threads WHERE thread_id = ? AND user_id = ?",
                (run.thread_id, run.user_id),
            ).fetchone()
            if owner is None:
                raise NotFound("thread not found")
            if run.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE user_id = ? AND idempotency_key = ?",
                    (run.user_id, run.idempotency_key),
                ).fetchone()
                if row is not None:
                    return row, False
            now = time.time()
            if self._next_pos is None:
                (self._next_pos,) = conn.execute(
                    "SELECT COALESCE(MAX(queue_pos), 0) + 1 FROM runs"
                ).fetchone()
            pos, self._next_pos = self._next_pos, self._next_pos + 1
            values = (
                run.run_id, run.thread_id, run.user_id, run.agent, run.input, run.parent_run_id,
                RunStatus.QUEUED.value, now, None, None, None, None, None, None,
                run.idempotency_key, pos,
            )  # fmt: skip
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 16)})", values
            )
            if run.parent_run_id is None:
                _insert_message(conn, run.thread_id, run.run_id, "user", run.input, now)
                conn.execute(
                    "UPDATE threads SET last_agent = ?, updated_at = ? WHERE thread_id = ?",
                    (run.agent, now, run.thread_id),
                )
            return values, True

        row, created = await self._db.write(op)
        return _run(row), created

    async def get_run(self, user_id: str, run_id: str) -> RunRecord:
        record = await self.find_run(run_id)
        if record is None or record.user_id != user_id:
            raise NotFound("run not found")
        return record

    async def find_run(self, run_id: str) -> RunRecord | None:
        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()

        row = await self._db.read(op)
        return None if row is None else _run(row)

    async def find_run_by_key(self, user_id: str, idempotency_key: str) -> RunRecord | None:
        def op(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE user_id = ? AND idempotency_key = ?",
                (user_id, idempotency_key),
            ).fetchone()

        row = await self._db.read(op)
        return None if row is None else _run(row)

    async def active_runs(self) -> list[RunRecord]:
        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running') "
                "ORDER BY queue_pos"
            ).fetchall()

        return [_run(row) for row in await self._db.read(op)]

    async def list_runs(self, user_id: str, thread_id: str) -> list[RunRecord]:
        await self.get_thread(user_id, thread_id)

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE thread_id = ? ORDER BY queue_pos",
                (thread_id,),
            ).fetchall()

        return [_run(row) for row in await self._db.read(op)]

    async def list_messages(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        await self.get_thread(user_id, thread_id)

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE thread_id = ? "
                "ORDER BY created_at, message_id",
                (thread_id,),
            ).fetchall()

        return [MessageRecord(*row) for row in await self._db.read(op)]

    async def thread_ids(self, after: str | None = None, limit: int = 1000) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT thread_id FROM threads WHERE thread_id > ? ORDER BY thread_id LIMIT ?",
                ("" if after is None else after, limit),
            ).fetchall()

        return [row[0] for row in await self._db.read(op)]

    async def history(
        self, thread_id: str, before_pos: int, max_turns: int, max_tokens: int
    ) -> list[list[dict[str, Any]]]:
        def op(conn: sqlite3.Connection) -> list[Any]:
            # Sizes first, from the covering index; then only the turns that fit.
            sizes = conn.execute(
                "SELECT run_id, chars FROM turns WHERE thread_id = ? AND queue_pos < ? "
                "ORDER BY queue_pos DESC LIMIT ?",
                (thread_id, before_pos, max(max_turns, 0)),
            ).fetchall()
            fit = turns_that_fit([chars for _, chars in sizes], max_turns, max_tokens)
            keep = [run_id for run_id, _ in sizes[:fit]]
            if not keep:
                return []
            return conn.execute(
                f"SELECT messages FROM turns WHERE run_id IN ({', '.join('?' * len(keep))}) "
                "ORDER BY queue_pos",
                keep,
            ).fetchall()

        return [json.loads(row[0]) for row in await self._db.read(op)]

    async def run_spans(self, thread_id: str, from_seq: int = 1) -> list[RunSpan]:
        def op(conn: sqlite3.Connection) -> list[Any]:
            # The runs_thread index finds the thread's runs; the filter keeps
            # only those that can still have retained events.
            return conn.execute(
                "SELECT run_id, parent_run_id, status, first_seq, last_seq FROM runs "
                "WHERE thread_id = ? AND (status IN ('queued', 'running') OR last_seq >= ?) "
                "ORDER BY queue_pos",
                (thread_id, from_seq),
            ).fetchall()

        return [
            RunSpan(run_id, parent, RunStatus(status), first, last)
            for run_id, parent, status, first, last in await self._db.read(op)
        ]

    def project(self, conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
        """Apply a committed batch to its runs, inside the append's transaction.

        One UPDATE per run touched, not per event (the hot path). Internal
        streams (health canaries) have no runs and are skipped.
        """
        for change in project_batch([e for e in events if not is_internal_thread(e.thread_id)]):
            if change.started_at is not None:
                conn.execute(
                    "UPDATE runs SET status = 'running', started_at = ?, "
                    "first_seq = COALESCE(first_seq, ?) WHERE run_id = ? AND status = 'queued'",
                    (change.started_at, change.first_seq, change.run_id),
                )
            if change.status is None:
                conn.execute(
                    "UPDATE runs SET last_seq = ? WHERE run_id = ?",
                    (change.last_seq, change.run_id),
                )
                continue
            conn.execute(
                "UPDATE runs SET last_seq = ?, status = ?, ended_at = ?, output = ?, error = ?, "
                "first_seq = COALESCE(first_seq, ?) WHERE run_id = ?",
                (
                    change.last_seq, change.status.value, change.ended_at, change.output,
                    change.error, change.first_seq, change.run_id,
                ),
            )  # fmt: skip
            if change.output is not None and not change.is_sub_run:
                _insert_message(
                    conn, change.thread_id, change.run_id, "assistant", change.output,
                    change.ended_at or time.time(),
                )  # fmt: skip
            if not change.is_sub_run:
                _store_turn(conn, change.run_id, change.last_seq)


def _insert_message(
    conn: sqlite3.Connection, thread_id: str, run_id: str | None, role: str, content: str, at: float
) -> None:
    conn.execute(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (f"msg_{run_id}_{role}", thread_id, run_id, role, content, at),
    )


def _store_turn(conn: sqlite3.Connection, run_id: str, terminal_seq: int) -> None:
    """Store an ended top-level run's turn, in its terminal event's transaction.

    Built here, once per run, from the run's events still in the log (retention
    never trims an active run's events, and this batch's rows are already
    inserted), rather than a row per tool event or text delta: the hot path of
    a run pays nothing, and a run ended by recovery after a restart is stored
    by the same code. Text is read only where it can matter: every delta of a
    run that did not complete, and for a completed one only what came before
    its last tool call (its answer is ``final_response``).
    """
    run = conn.execute(
        "SELECT thread_id, input, queue_pos, first_seq FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if run is None:
        return
    thread_id, user_message, queue_pos, first_seq = run
    where = "thread_id = ? AND seq >= ? AND seq < ? AND run_id = ?"
    bounds = (thread_id, first_seq or terminal_seq, terminal_seq, run_id)
    terminal_type, terminal_raw = conn.execute(
        "SELECT type, raw FROM events WHERE thread_id = ? AND seq = ?", (thread_id, terminal_seq)
    ).fetchone()
    tools = conn.execute(
        f"SELECT seq, type, raw FROM events WHERE {where} "
        "AND type IN ('tool_executing', 'tool_completed')",
        bounds,
    ).fetchall()
    text_until = terminal_seq
    if terminal_type == "agent_completed":
        text_until = max((seq for seq, kind, _ in tools if kind == "tool_executing"), default=0)
    texts = conn.execute(
        f"SELECT seq, type, raw FROM events WHERE {where} AND type = 'text_delta' AND seq < ?",
        (*bounds, text_until),
    ).fetchall()
    builder = TurnBuilder(user_message)
    for seq, kind, raw in sorted(tools + texts):
        if kind in TURN_EVENT_TYPES:
            builder.add(seq, kind, raw)
    messages = builder.finish(terminal_type, terminal_raw)
    encoded = json.dumps(messages, ensure_ascii=False)
    conn.execute(
        "INSERT OR REPLACE INTO turns (run_id, thread_id, queue_pos, chars, messages) "
        "VALUES (?, ?, ?, ?, ?)",
        (run_id, thread_id, queue_pos, turn_chars(messages), encoded),
    )
