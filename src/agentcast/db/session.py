"""What an open checks and writes first: migrations, epoch rotation, the stamp.

Kept apart from the writer and its group commit (:mod:`agentcast.db.writer`):
this is the part that decides whether the positions clients hold still name
the same events. It runs once per :meth:`~agentcast.db.sqlite.SqliteDatabase.open`,
on the writer thread before it takes any op, after the schema migrations
that run on the same connection.

**NORMAL mode.** ``synchronous=NORMAL`` is a documented opt-in: a power loss
may lose the last commits. Because a lost commit could let a ``seq`` be
reissued under the same epoch (forbidden by invariant 2), the lock file
records the mode of the session holding it; when the previous session was
NORMAL and did not close cleanly, ``open`` gives every stream a new
epoch before anything else is written, so clients resume with
``recovered: false`` instead of a silent gap.

**Restores.** A database restored from a backup has lost the commits made
after the copy, so the same ``(epoch, seq)`` would name other events: a
client would skip or repeat events silently. The database keeps an identity
(``meta.db_id``, made once) and a ``stamp`` replaced at every open and clean
close; the lock marker records both. ``open`` rotates every epoch, as for
NORMAL mode, when the marker is missing or unreadable, names another
database (the file was replaced), or names another stamp (an older copy of
this database). A copy taken while the server ran and restored after a
crash carries the marker's stamp and cannot be told apart: the documented
restore procedure therefore always rotates (``agentcast db rotate-epochs``,
``open`` with ``rotate_epochs=True``). A crash in the instant between the
database's stamp and the marker's may rotate once needlessly: the safe
direction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InternalError
from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Session", "migrate", "new_token", "open_session", "restamp", "rotation_reason"]

#: The database's logger: everything of the SQLite database logs under one name.
logger = logging.getLogger("agentcast.db.sqlite")


class Session(NamedTuple):
    """What :meth:`SqliteDatabase.open` found and wrote before any other write."""

    db_id: str
    stamp: str
    #: Why every epoch was rotated, or ``None``.
    rotation: str | None
    #: Streams that got a new epoch.
    rotated: int


def open_session(
    conn: sqlite3.Connection, path: Path, previous: dict[str, Any], force: bool
) -> Session:
    """Compare the database with the lock marker, rotate epochs if needed, stamp it.

    One transaction, on the writer thread before it takes any op: no
    event can be appended under an epoch that is about to change.
    ``previous`` is the lock marker the last session left; ``force`` rotates
    regardless (the restore procedure).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        has_streams = bool(conn.execute("SELECT EXISTS (SELECT 1 FROM streams)").fetchone()[0])
        reason = "it was requested (restore procedure)" if force else None
        if reason is None and has_streams:  # no stream: no position to protect
            reason = rotation_reason(previous, meta)
        rotated = 0
        if reason is not None:
            rotated = conn.execute("UPDATE streams SET epoch = lower(hex(randomblob(8)))").rowcount
        db_id = meta.get("db_id") or new_token()
        stamp = new_token()
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
            path,
            rotated,
            reason,
        )
    return Session(db_id, stamp, reason, rotated)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
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


def rotation_reason(previous: dict[str, Any], meta: dict[str, str]) -> str | None:
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


def restamp(conn: sqlite3.Connection) -> str:
    """Replace the database's stamp (the last write of a clean close)."""
    stamp = new_token()
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stamp', ?)", (stamp,))
    return stamp


def new_token() -> str:
    """A fresh random identity or stamp (64 bits, hex)."""
    return os.urandom(8).hex()
