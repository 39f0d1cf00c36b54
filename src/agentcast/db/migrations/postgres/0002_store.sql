-- The store: threads, runs, messages and turns (agentcast.store.postgres),
-- beside the event log of 0001 so that a run's status is written in the same
-- transaction as its terminal event (docs/architecture.md invariant 3).
-- Mirrors the SQLite schema (agentcast.db.schema, migrations 1 and 3).
--
-- Ids are compared byte by byte ("C"), as SQLite compares them: listings and
-- the retention sweep's paging (thread_ids) keep the same order whatever
-- locale the database was created with.
-- Timestamps are epoch seconds as double precision, the floats SQLite stores,
-- so records read back compare equal across backends.

CREATE TABLE threads (
    thread_id  text COLLATE "C" PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL,
    title      text NOT NULL DEFAULT '',
    last_agent text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX threads_user ON threads (user_id, updated_at DESC, thread_id DESC);

-- Queue positions: nextval is never rolled back, so a retried or failed
-- group leaves gaps; only the order matters (recovery, history, run_spans).
CREATE SEQUENCE run_queue_pos AS bigint;

CREATE TABLE runs (
    run_id          text COLLATE "C" PRIMARY KEY,
    thread_id       text COLLATE "C" NOT NULL,
    user_id         text COLLATE "C" NOT NULL,
    agent           text NOT NULL,
    input           text NOT NULL,
    parent_run_id   text COLLATE "C",
    status          text NOT NULL,
    created_at      double precision NOT NULL,
    started_at      double precision,
    ended_at        double precision,
    first_seq       bigint,
    last_seq        bigint,
    output          text,
    error           text,
    idempotency_key text COLLATE "C",
    queue_pos       bigint NOT NULL DEFAULT nextval('run_queue_pos')
);
ALTER SEQUENCE run_queue_pos OWNED BY runs.queue_pos;
-- create_run's INSERT ... ON CONFLICT names this index's columns and predicate:
-- two processes racing with one key get one run.
CREATE UNIQUE INDEX runs_idempotency ON runs (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_active ON runs (status, queue_pos)
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_thread ON runs (thread_id, queue_pos);

CREATE TABLE messages (
    message_id text COLLATE "C" PRIMARY KEY,
    thread_id  text COLLATE "C" NOT NULL,
    run_id     text COLLATE "C",
    role       text NOT NULL,
    content    text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX messages_thread ON messages (thread_id, created_at);

-- A thread's conversation history (agentcast.agents.history): one row per
-- ended top-level run, written with its terminal event. ``messages`` is the
-- JSON text exactly as encoded (text, not jsonb, which would reorder keys).
CREATE TABLE turns (
    run_id    text COLLATE "C" PRIMARY KEY,
    thread_id text COLLATE "C" NOT NULL,
    queue_pos bigint  NOT NULL,
    chars     bigint  NOT NULL,
    messages  text    NOT NULL
);
CREATE INDEX turns_thread ON turns (thread_id, queue_pos, chars);
