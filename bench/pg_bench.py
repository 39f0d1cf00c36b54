"""PostgreSQL helpers of the engine benchmark, and its child processes.

The engine benchmark (``engine_bench.py --modes …,postgres``) measures the
PostgreSQL log as it measures SQLite's, plus what only a shared database
has: a follower in another process, and several writer processes on one
database. Those other processes are this file run as a script:

* ``follow``: a :class:`~agentcast.log.postgres.PostgresLog` following some
  threads; prints ``ready``, then, once it received ``--count`` events, one
  JSON line of receipt - due per event (the due time travels in the event:
  ``perf_counter`` is the system-wide monotonic clock on Linux, so the two
  processes share it);
* ``write``: ``--producers`` concurrent one-event appends to distinct threads
  or to one shared thread; prints ``ready``, waits for ``go`` on stdin (every
  writer starts together), then one JSON line with its count.

Each figure runs on a database of its own, ``agentcast_b_<hex>``, created
and migrated here and dropped afterwards (as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from agentcast.db.pg_migrate import apply_migrations
from agentcast.db.postgres import PostgresDatabase
from agentcast.events import encode_payload
from agentcast.log.base import EventDraft
from agentcast.log.postgres import PostgresLog
from agentcast.types import new_event_id

__all__ = [
    "PG_URL",
    "create_database",
    "drop_database",
    "open_pg_log",
    "pg_settings",
    "settings_line",
]

#: A server and a database the benchmark may connect to in order to create others.
PG_URL: Final = os.environ.get(
    "AGENTCAST_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: What every PostgreSQL figure is printed beside (``SHOW``).
SETTINGS: Final = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "shared_buffers",
)
PAYLOAD: Final = encode_payload("agent_thinking", {"reasoning": "x" * 120, "progress": 0.5})
_DUE: Final = re.compile(rb"due=([0-9.]+)")
_SCRIPT: Final = os.path.abspath(__file__)


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(admin_url: str = PG_URL) -> str:
    """Create and migrate ``agentcast_b_<hex>``; its URL."""
    name = f"agentcast_b_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return url


async def drop_database(url: str, admin_url: str = PG_URL) -> None:
    """Drop the database of ``url``, disconnecting whoever is still connected."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_settings(url: str = PG_URL) -> dict[str, str]:
    """The server settings every figure depends on (``SHOW``)."""
    conn = await asyncpg.connect(url)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in SETTINGS}
    finally:
        await conn.close()


def settings_line(settings: dict[str, str]) -> str:
    """``PostgreSQL 15.2, fsync=on, …`` for a table's heading."""
    rest = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "server_version")
    return f"PostgreSQL {settings.get('server_version', '?')}: {rest}"


async def open_pg_log(url: str, pool_max_size: int = 4) -> PostgresLog:
    """A database object and a log on ``url``, open (close both with :func:`close_pg_log`)."""
    log = PostgresLog(PostgresDatabase(url, pool_max_size=pool_max_size))
    await log.open()
    return log


async def close_pg_log(log: PostgresLog) -> None:
    await log.close()
    await log.db.close()


def due_of(raw: bytes) -> float:
    """The due time a latency event carries in its reasoning (``due=<perf_counter>``)."""
    match = _DUE.search(raw)
    if match is None:
        raise ValueError("an event without its due time")
    return float(match.group(1))


# Child processes


async def _follow(args: argparse.Namespace) -> None:
    log = await open_pg_log(args.url)
    samples: list[float] = []
    try:
        threads = args.threads.split(",")
        followers = []
        for thread in threads:
            info = await log.info(thread)
            followers.append(await log.follow(thread, info.last_seq, info.epoch))
        listener = log.listener
        for _ in range(1000):  # LISTEN first: a notification sent before it is lost
            if listener is None or listener.connected:
                break
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        done = asyncio.Event()

        async def drain(follower: Any) -> None:
            while True:
                batch = await follower.next_batch(1024)
                now = time.perf_counter()
                samples.extend(now - due_of(ev.raw) for ev in batch)
                if len(samples) >= args.count:
                    done.set()

        tasks = [asyncio.create_task(drain(f)) for f in followers]
        await done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for follower in followers:
            await follower.aclose()
    finally:
        await close_pg_log(log)
    print(json.dumps({"samples": samples}), flush=True)


async def _write(args: argparse.Namespace) -> None:
    log = await open_pg_log(args.url)
    counts = [0] * args.producers
    try:
        threads = ["shared" if args.shared else f"w{args.tag}_{i}" for i in range(args.producers)]
        for thread in set(threads):  # the streams exist before the clock starts
            await log.info(thread)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        deadline = time.perf_counter() + args.seconds

        async def producer(i: int) -> None:
            while time.perf_counter() < deadline:
                draft = EventDraft(
                    new_event_id(), threads[i], "run", None, "agent_thinking", time.time(),
                    "bench", PAYLOAD,
                )  # fmt: skip
                await log.append([draft])
                counts[i] += 1

        started = time.perf_counter()
        await asyncio.gather(*(producer(i) for i in range(args.producers)))
        elapsed = time.perf_counter() - started
        stats = log.db.stats
        print(
            json.dumps(
                {
                    "events": sum(counts),
                    "seconds": elapsed,
                    "groups": stats.groups_committed,
                    "retried": stats.groups_retried,
                }
            ),
            flush=True,
        )
    finally:
        await close_pg_log(log)


async def spawn(*argv: str) -> asyncio.subprocess.Process:
    """This file as a child process (``follow`` or ``write``), piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        _SCRIPT,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 24,  # the follower's samples come as one JSON line
    )


async def expect_ready(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if line.strip() != b"ready":
        raise RuntimeError(f"child process did not start: {line!r}")


async def result_of(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    await asyncio.wait_for(proc.wait(), timeout)
    if not line:
        raise RuntimeError(f"child process exited with {proc.returncode} and no result")
    return dict(json.loads(line))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    follow = sub.add_parser("follow")
    follow.add_argument("--url", required=True)
    follow.add_argument("--threads", required=True)
    follow.add_argument("--count", type=int, required=True)
    write = sub.add_parser("write")
    write.add_argument("--url", required=True)
    write.add_argument("--producers", type=int, default=100)
    write.add_argument("--seconds", type=float, default=3.0)
    write.add_argument("--shared", action="store_true")
    write.add_argument("--tag", default="0")
    args = parser.parse_args(argv)
    asyncio.run(_follow(args) if args.role == "follow" else _write(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
