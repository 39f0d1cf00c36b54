"""The SQLite schema of a data directory, as forward migrations.

The event log and the store share one database file so that a run's status is
written in the same transaction as its terminal event (docs/architecture.md invariant 3).
Each migration runs once, in order, inside one transaction with the
``schema_version`` bump; a database newer than this code refuses to open.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE streams (
            thread_id TEXT PRIMARY KEY,
            epoch     TEXT    NOT NULL,
            first_seq INTEGER NOT NULL DEFAULT 1,
            last_seq  INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;

        -- A rowid table: rows (with their envelope bytes) are appended at the
        -- end of one B-tree whatever thread they belong to, so a group commit
        -- of events from many threads dirties a few pages, not one per thread.
        -- Measured: 3x the durable appends/s of a (thread_id, seq) primary key.
        CREATE TABLE events (
            id            INTEGER PRIMARY KEY,
            thread_id     TEXT    NOT NULL,
            seq           INTEGER NOT NULL,
            event_id      TEXT    NOT NULL,
            run_id        TEXT    NOT NULL,
            parent_run_id TEXT,
            type          TEXT    NOT NULL,
            ts            REAL    NOT NULL,
            raw           BLOB    NOT NULL
        );
        CREATE UNIQUE INDEX events_position ON events(thread_id, seq);
        CREATE UNIQUE INDEX events_event_id ON events(event_id);

        CREATE TABLE threads (
            thread_id  TEXT PRIMARY KEY,
            user_id    TEXT NOT NULL,
            title      TEXT NOT NULL DEFAULT '',
            last_agent TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX threads_user ON threads(user_id, updated_at DESC, thread_id DESC);

        CREATE TABLE runs (
            run_id          TEXT PRIMARY KEY,
            thread_id       TEXT NOT NULL,
            user_id         TEXT NOT NULL,
            agent           TEXT NOT NULL,
            input           TEXT NOT NULL,
            parent_run_id   TEXT,
            status          TEXT NOT NULL,
            created_at      REAL NOT NULL,
            started_at      REAL,
            ended_at        REAL,
            first_seq       INTEGER,
            last_seq        INTEGER,
            output          TEXT,
            error           TEXT,
            idempotency_key TEXT,
            queue_pos       INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX runs_idempotency ON runs(user_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        CREATE INDEX runs_active ON runs(status, queue_pos)
            WHERE status IN ('queued', 'running');
        CREATE INDEX runs_thread ON runs(thread_id, queue_pos);

        CREATE TABLE messages (
            message_id TEXT PRIMARY KEY,
            thread_id  TEXT NOT NULL,
            run_id     TEXT,
            role       TEXT NOT NULL,
            content    TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX messages_thread ON messages(thread_id, created_at);
        """,
    ),
    (
        2,
        """
        -- ``db_id``: this database's identity, made once. ``stamp``: a token
        -- replaced at every open and clean close. The lock marker records
        -- both, so a database file that was replaced or restored from an
        -- older copy does not match it, and its streams get new epochs
        -- (agentcast.db.session, "Restores").
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        3,
        """
        -- A thread's conversation history (agentcast.agents.history): one row
        -- per ended top-level run, written with its terminal event, holding
        -- the turn as chat-completion messages (a JSON array, the user
        -- message first) and its size in characters, so history is bounded
        -- before the turns are read and never depends on event retention.
        CREATE TABLE IF NOT EXISTS turns (
            run_id    TEXT    PRIMARY KEY,
            thread_id TEXT    NOT NULL,
            queue_pos INTEGER NOT NULL,
            chars     INTEGER NOT NULL,
            messages  TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS turns_thread ON turns(thread_id, queue_pos, chars);

        -- Runs that ended before this migration: their user message and, if
        -- completed, their answer (their tool calls are not recovered). Safe to
        -- run again over a database whose version was set back.
        INSERT OR IGNORE INTO turns (run_id, thread_id, queue_pos, chars, messages)
        SELECT run_id, thread_id, queue_pos,
               length(input) + CASE WHEN status = 'completed'
                                    THEN length(COALESCE(output, '')) ELSE 0 END,
               CASE WHEN status = 'completed'
                    THEN json_array(json_object('role', 'user', 'content', input),
                                    json_object('role', 'assistant',
                                                'content', COALESCE(output, '')))
                    ELSE json_array(json_object('role', 'user', 'content', input)) END
        FROM runs
        WHERE parent_run_id IS NULL AND status IN ('completed', 'failed', 'cancelled');
        """,
    ),
)

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]
