"""Restores of a PostgreSQL database: new epochs when the cluster is not the one we wrote to.

A client resumes a thread from ``(epoch, seq)``. A database restored from a
backup has lost the commits made after the copy, so the same position could
name other events, and the client would skip or repeat events silently; a
new epoch per stream makes every client resume with ``recovered: false``
instead (docs/event-log.md, "Positions and resume").

PostgreSQL tells us when that happened. ``pg_control_system()`` gives the
cluster's *system identifier*, which a restore into a new cluster (``initdb``
and a logical dump, or a base backup started as a new cluster) changes, and
``pg_control_checkpoint()`` gives the *timeline*, which point-in-time recovery
bumps when it ends. Every process that opens the database compares the pair
with the one stored in ``meta`` (``cluster_identity``); when it differs, every
stream gets a new epoch and the new pair is stored, in one transaction under
an advisory lock, so the processes of a cluster that start together rotate
once. The first open stores the pair and rotates nothing.

A restore into the *same* cluster and timeline (e.g. a ``pg_dump`` loaded
back into the server it came from) cannot be told apart: the documented
restore procedure runs ``agentcast db rotate-epochs``, which calls
:func:`check_identity` with ``rotate=True``. Reading the control functions
needs superuser or ``pg_monitor``; without it nothing is detected (a warning
says so) and the procedure is the only protection.
"""

from __future__ import annotations

import logging
from typing import Final

import asyncpg

__all__ = ["EPOCH_LOCK_KEY", "IDENTITY_KEY", "check_identity", "cluster_identity"]

logger = logging.getLogger(__name__)

#: Where the pair is stored in ``meta``.
IDENTITY_KEY: Final = "cluster_identity"
#: The advisory lock that makes concurrent opens rotate once ("agentepo" in ASCII).
EPOCH_LOCK_KEY: Final = 0x6167656E7465706F
#: A new 64-bit epoch per stream, in the hex form the SQLite log uses.
_ROTATE: Final = (
    "UPDATE streams SET epoch = substr(md5(random()::text || clock_timestamp()::text "
    "|| thread_id), 1, 16)"
)


async def cluster_identity(conn: asyncpg.Connection) -> str | None:
    """``"<system identifier>/<timeline>"`` of the server, or ``None`` when not permitted."""
    try:
        system = await conn.fetchval("SELECT system_identifier FROM pg_control_system()")
        timeline = await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()")
    except asyncpg.InsufficientPrivilegeError:
        return None
    return f"{system}/{timeline}"


async def check_identity(
    conn: asyncpg.Connection, *, rotate: bool = False
) -> tuple[str | None, int]:
    """Rotate every epoch if the cluster changed (or ``rotate``); store the cluster's pair.

    Args:
        conn: A connection outside any transaction.
        rotate: Rotate whatever the pair says (the restore procedure).

    Returns:
        Why the epochs were rotated (``None``: they were not) and how many streams got one.
    """
    current = await cluster_identity(conn)
    if current is None and not rotate:
        logger.warning(
            "cannot read pg_control_system()/pg_control_checkpoint() (needs superuser or "
            "pg_monitor): a restore will not be detected; run `agentcast db rotate-epochs` "
            "after every restore"
        )
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EPOCH_LOCK_KEY)
        stored = await conn.fetchval("SELECT value FROM meta WHERE key = $1", IDENTITY_KEY)
        reason: str | None = None
        if rotate:
            reason = "asked to (agentcast db rotate-epochs)"
        elif current is not None and stored is not None and stored != current:
            reason = f"the cluster changed (system/timeline {stored} -> {current}): a restore"
        rotated = 0
        if reason is not None:
            status = await conn.execute(_ROTATE)
            rotated = int(status.split()[-1])
            logger.warning("every stream got a new epoch (%d streams): %s", rotated, reason)
        if current is not None and current != stored:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                IDENTITY_KEY,
                current,
            )
    return reason, rotated
