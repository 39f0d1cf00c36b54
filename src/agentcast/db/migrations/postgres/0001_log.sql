-- The event log: one stream row per thread (epoch, retained range, head)
-- and one row per event with the envelope bytes sent to clients.
-- Timestamps are epoch seconds as double precision, as in SQLite. Ids compare
-- byte by byte ("C"), as SQLite compares them, whatever the database's locale.

CREATE TABLE streams (
    thread_id text COLLATE "C" PRIMARY KEY,
    epoch     text NOT NULL,
    first_seq bigint NOT NULL DEFAULT 1,
    last_seq  bigint NOT NULL DEFAULT 0
);

CREATE TABLE events (
    thread_id     text COLLATE "C" NOT NULL,
    seq           bigint NOT NULL,
    event_id      text COLLATE "C" NOT NULL UNIQUE,
    run_id        text COLLATE "C" NOT NULL,
    parent_run_id text,
    type          text NOT NULL,
    ts            double precision NOT NULL,
    raw           bytea NOT NULL,
    PRIMARY KEY (thread_id, seq)
);

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO meta (key, value) VALUES ('db_id', md5(random()::text || clock_timestamp()::text));
