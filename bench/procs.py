"""The processes of a bench run: servers under test, the load generator, the machine.

Every child is started on 127.0.0.1 with its CPU pinned when the machine has
two (``os.sched_setaffinity`` before ``exec``), in its own session, and with
``PR_SET_PDEATHSIG`` so that it dies with the bench even if the bench is
killed; :func:`stop_process` bounds every wait and ends with SIGKILL. No
server outlives its run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import secrets
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psutil
from bench.config import PG_URL, REPO, Target
from bench.stats import raise_nofile_limit

__all__ = [
    "LoadGen",
    "PgCpuSampler",
    "PgDatabase",
    "Server",
    "fsync_latency",
    "machine_info",
    "pg_activity",
    "pg_settings",
    "raise_nofile_limit",
    "stop_process",
]


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """What a child does before exec: its CPU, and death with this process (no orphans)."""

    def setup() -> None:
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die if the bench dies

    return setup


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str) -> bool:
    # No proxies: loopback only, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, wait (bounded), then SIGKILL: never leave a process behind."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class Server:
    """One server under test, started as its own process and stopped in every case."""

    def __init__(self, target: Target, work: Path, cpu: int | None, secret: str) -> None:
        self.target = target
        self.cpu = cpu
        self.secret = secret
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/ws"
        stamp = f"{target.name.replace('/', '-')}-{self.port}"
        self.data_dir = work / f"data-{stamp}"
        self.log_path = work / f"server-{stamp}.log"
        #: PostgreSQL: the server's own database, created (and migrated) before it
        #: starts and dropped when it stops, so no two servers share rows.
        self.database: PgDatabase | None = None
        self._log: Any = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if target.server == "agentcast":
            args = [
                sys.executable,
                "-m",
                "agentcast",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--agents",  # the built-ins (W3's echo) beside the bench agent
                "agentcast.agents.builtin:registry",
                "--agents",
                "bench.agents:registry",
                "--log-level",
                "warning",
            ]
            if target.backend == "postgres":
                self.database = PgDatabase.create(work)
                args += ["--database-url", self.database.url]
            else:
                args += ["--log-backend", str(target.backend)]
            env.update(
                {
                    "AGENTCAST_JWT_SECRET": secret,
                    "AGENTCAST_SQLITE_SYNCHRONOUS": "FULL",
                    # One run per user, thousands of users: lift the process-wide
                    # cap on concurrent runs (a limit, not a durability setting).
                    "AGENTCAST_MAX_CONCURRENT_RUNS": "10000",
                    "AGENTCAST_SHUTDOWN_GRACE_S": "2",
                }
            )
            self.ready_url = f"http://127.0.0.1:{self.port}/readyz"
        else:
            args = [sys.executable, "-m", "bench.baseline_server", "--port", str(self.port)]
            self.ready_url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup(cpu),
                start_new_session=True,
            )
        except BaseException:
            if self._log is not None:
                self._log.close()
            if self.database is not None:
                self.database.drop()
            raise
        try:
            self._wait_ready(deadline=time.monotonic() + 60)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The server's process id (psutil reads its CPU and RSS)."""
        return int(self.proc.pid)

    def stop(self) -> None:
        """Stop the process (bounded), close its log, drop its database (PostgreSQL)."""
        try:
            stop_process(self.proc)
        finally:
            self._log.close()
            if self.database is not None:
                self.database.drop()

    def settle(self, *, idle_cores: float = 0.05, span: float = 0.5, limit: float = 20.0) -> float:
        """Wait until the server is idle (CPU under ``idle_cores`` over ``span``); seconds waited.

        A step past W2's knee leaves a backlog (events still being sent, a
        long WAL to checkpoint); the next step must not pay for it. With
        PostgreSQL the backlog may sit in the database's backends instead, so
        their CPU counts too. Bounded by ``limit``: a server that never calms
        down is measured as it is.
        """
        proc = psutil.Process(self.pid)
        start = time.monotonic()
        while time.monotonic() - start < limit:
            before = _cpu_s(proc) + self._database_cpu()
            time.sleep(span)
            used = _cpu_s(proc) + self._database_cpu() - before
            if used / span < idle_cores:
                break
        return time.monotonic() - start

    def _database_cpu(self) -> float:
        """CPU seconds of the PostgreSQL backends of this server's database (0 without)."""
        db = self.database
        if db is None or db.postmaster_pid is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(db.postmaster_pid).children():
                with contextlib.suppress(psutil.Error):
                    if f" {db.name} " in " ".join(child.cmdline()) + " ":
                        total += _cpu_s(child)
        return total

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.target.name} exited ({self.proc.returncode}):\n{tail}")
            if _http_ok(self.ready_url):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.target.name} not ready within 60s (see {self.log_path})")


class LoadGen:
    """The load-generator process: one phase per JSON line, one result line back."""

    def __init__(self, work: Path, cpu: int | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log = open(work / "loadgen.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", "bench.load", "--rpc"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=_child_setup(cpu),
            start_new_session=True,
        )
        self._buffer = b""

    def call(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one phase; a phase that outlives ``timeout`` kills the load generator."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(f"load generator gave no result within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError("load generator exited (see loadgen.log)")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        """Close its stdin (it exits at EOF), then stop it like a server."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        stop_process(self.proc)
        self._log.close()


# --- PostgreSQL ------------------------------------------------------------------------

#: Every wait on the PostgreSQL server is bounded: connecting, one statement, the schema.
_PG_CONNECT_S: Final = 10.0
_PG_STATEMENT_S: Final = 30.0
_PG_UPGRADE_S: Final = 120.0
_BENCH_DB: Final = re.compile(r"^agentcast_b_[0-9a-f]{12}$")
#: SHOW these for the settings line that every PostgreSQL figure is reported beside.
PG_SETTINGS: Final = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "shared_buffers",
    "wal_buffers",
    "commit_delay",
    "max_connections",
    "autovacuum",
)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _where(url: str) -> str:
    """``url`` without its user and password: what a report or an error may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def _parent_pid(pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid).parent()
        return parent.pid if parent is not None else None
    return None


def _pg_admin(statements: list[str], url: str = PG_URL) -> list[Any]:
    """Run ``statements`` on one connection to ``url``; each one's first value, then
    the postmaster's pid (None when the server is not a process of this machine).

    The orchestrator is synchronous: one short ``asyncio.run`` per call, bounded
    as a whole, so that an unreachable server fails a run instead of hanging it.
    """
    import asyncio

    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=_PG_CONNECT_S)
        try:
            values = [await conn.fetchval(sql, timeout=_PG_STATEMENT_S) for sql in statements]
            # While this backend lives: its parent is the postmaster (None elsewhere).
            values.append(_parent_pid(int(await conn.fetchval("SELECT pg_backend_pid()"))))
            return values
        finally:
            await asyncio.wait_for(conn.close(), _PG_CONNECT_S)

    async def bounded() -> list[Any]:
        return await asyncio.wait_for(run(), _PG_CONNECT_S + _PG_STATEMENT_S * len(statements))

    try:
        return asyncio.run(bounded())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The orchestrator reports RuntimeError/OSError as a failed run (exit 1).
        raise RuntimeError(f"PostgreSQL at {_where(url)}: {type(exc).__name__}: {exc}") from exc


def pg_settings(url: str = PG_URL) -> dict[str, str]:
    """What a PostgreSQL figure depends on, as the server reports it (``SHOW``)."""
    values = _pg_admin([f"SHOW {name}" for name in PG_SETTINGS], url)
    settings = {name: str(value) for name, value in zip(PG_SETTINGS, values, strict=False)}
    settings["url"] = _where(url)
    return settings


def pg_activity(database: str) -> dict[str, int]:
    """Server-wide counters that explain a PostgreSQL figure no CPU reading shows.

    Checkpoints (``DROP DATABASE`` asks for an immediate one, so other users of
    the same server cause them) and commits in *other* databases: both wait on
    the same WAL and disk as this server's commits. Read before and after a phase.
    """
    import asyncio

    import asyncpg

    async def run() -> dict[str, int]:
        conn = await asyncpg.connect(PG_URL, timeout=_PG_CONNECT_S)
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),"
                " (SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database"
                "  WHERE datname IS DISTINCT FROM $1),"
                " (SELECT xact_commit FROM pg_stat_database WHERE datname = $1)",
                database,
                timeout=_PG_STATEMENT_S,
            )
        finally:
            await asyncio.wait_for(conn.close(), _PG_CONNECT_S)
        return {
            "checkpoints": int(row[0] or 0),
            "other_commits": int(row[1] or 0),
            "own_commits": int(row[2] or 0),
        }

    try:
        return asyncio.run(asyncio.wait_for(run(), _PG_CONNECT_S + _PG_STATEMENT_S))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return {}


class PgDatabase:
    """A database of one server under test: ``CREATE DATABASE``, the schema, ``DROP``.

    Each server gets an empty database (``agentcast_b_<hex>``), created from
    :data:`bench.config.PG_URL`'s database and migrated with ``agentcast db
    upgrade`` as an operator would; :meth:`drop` removes it with ``WITH
    (FORCE)`` even if a connection was left behind.
    """

    def __init__(self, name: str, url: str, postmaster_pid: int | None) -> None:
        self.name = name
        self.url = url
        #: The PostgreSQL server's main process: its children are the backends
        #: and auxiliary processes whose CPU :class:`PgCpuSampler` reads.
        self.postmaster_pid = postmaster_pid
        self.dropped = False

    @classmethod
    def create(cls, work: Path) -> PgDatabase:
        """Create and migrate a fresh database; dropped again if the schema fails."""
        name = f"agentcast_b_{secrets.token_hex(6)}"
        _create, postmaster = _pg_admin([f'CREATE DATABASE "{name}"'])
        db = cls(name, _with_database(PG_URL, name), postmaster)
        log = work / f"db-upgrade-{name}.log"
        try:
            with open(log, "wb") as out:
                done = subprocess.run(
                    [sys.executable, "-m", "agentcast", "db", "upgrade", "--database-url", db.url],
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=_PG_UPGRADE_S,
                    check=False,
                )
            if done.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"agentcast db upgrade failed ({done.returncode}):\n{tail}")
        except BaseException:
            db.drop()
            raise
        return db

    def drop(self) -> None:
        """``DROP DATABASE … WITH (FORCE)``, once; a failure is said, never raised.

        Called from ``finally`` blocks: raising here would hide the error that
        got us there. A database left behind is named on stderr.
        """
        if self.dropped or not _BENCH_DB.match(self.name):
            return
        self.dropped = True
        try:
            _pg_admin([f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'])
        except Exception as exc:
            print(f"bench: could not drop database {self.name}: {exc!r}", file=sys.stderr)


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class PgCpuSampler:
    """The CPU of the PostgreSQL server while a phase runs, by kind of process.

    PostgreSQL runs outside the bench's pinning and outside the server's
    process, so agentcast's own CPU per event leaves out the work it asked the
    database for. A thread reads, every ``interval`` seconds, the cumulative
    CPU of the postmaster's children, split by their process title into the
    backends of this server's database (``own``), everything else that is not a
    client backend (postmaster, WAL writer, checkpointer, … — work done for
    whoever commits: ``aux``) and other databases' client backends (``others``:
    the machine's other users, reported, never charged). The agentcast server is
    read on the same clock so that the window can be checked against the load
    generator's own reading (:meth:`window`).
    """

    def __init__(self, database: PgDatabase, server_pid: int, interval: float = 0.2) -> None:
        self.database = database
        self.interval = interval
        self._server = psutil.Process(server_pid)
        self._postmaster: psutil.Process | None = None
        if database.postmaster_pid is not None:
            with contextlib.suppress(psutil.Error):
                self._postmaster = psutil.Process(database.postmaster_pid)
        self._procs: dict[int, tuple[psutil.Process, str, float]] = {}
        self._totals = {"own": 0.0, "aux": 0.0, "others": 0.0}
        #: (time.time(), own, aux, others, agentcast): cumulative CPU seconds.
        self.series: list[tuple[float, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pg-cpu", daemon=True)

    @property
    def available(self) -> bool:
        """Whether the postmaster's processes can be read (same machine, permissions)."""
        return self._postmaster is not None

    def start(self) -> PgCpuSampler:
        """Take the first sample now, then one every ``interval`` in a thread."""
        if self.available:
            self._sample(first=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Take the last sample and end the thread (bounded)."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(5.0)
            self._sample(first=False)

    def _kind(self, proc: psutil.Process) -> str:
        title = " ".join(proc.cmdline())
        if not title.startswith("postgres:"):  # just forked: no title yet, ask again
            return "pending" if proc != self._postmaster else "aux"
        if f" {self.database.name} " in f"{title} ":
            return "own"
        if re.search(r"\(\d+\)|\[local\]", title):  # a client backend: host(port) or socket
            return "others"
        return "aux"

    def _sample(self, *, first: bool) -> None:
        assert self._postmaster is not None
        now = time.time()
        try:
            procs = [self._postmaster, *self._postmaster.children()]
        except psutil.Error:
            procs = []
        seen: set[int] = set()
        for proc in procs:
            try:
                cpu = _cpu_s(proc)
                known = self._procs.get(proc.pid)
                if known is None or known[0] != proc:
                    kind = self._kind(proc)
                    # Born since the last sample: all of its CPU is new (not at the first).
                    if not first and kind != "pending":
                        self._totals[kind] += cpu
                else:
                    kind = known[1]
                    if kind == "pending":
                        kind = self._kind(proc)
                        # From when it was first seen: the fork's first ms are lost.
                        if kind != "pending":
                            self._totals[kind] += max(0.0, cpu - known[2])
                    else:
                        self._totals[kind] += max(0.0, cpu - known[2])
                self._procs[proc.pid] = (proc, kind, cpu)
                seen.add(proc.pid)
            except psutil.Error:
                continue
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        try:
            server = _cpu_s(self._server)
        except psutil.Error:
            server = self.series[-1][4] if self.series else 0.0
        t = self._totals
        self.series.append((now, t["own"], t["aux"], t["others"], server))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(first=False)

    def _at(self, when: float) -> tuple[float, ...]:
        """The cumulative values at ``when``, interpolated between two samples."""
        series = self.series
        if when <= series[0][0]:
            return series[0][1:]
        for (t0, *a), (t1, *b) in itertools.pairwise(series):
            if t0 <= when <= t1:
                f = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
                return tuple(x + (y - x) * f for x, y in zip(a, b, strict=True))
        return series[-1][1:]

    def window(
        self, start: float, end: float, delivered: int, server_cpu_s: float | None
    ) -> dict[str, Any]:
        """PostgreSQL's CPU over ``[start, end]`` (wall clock), per delivered event.

        ``postgres_window_check`` is agentcast's CPU over the same span on this
        clock ÷ the load generator's reading over its window: near 1.0 when the
        two windows coincide.
        """
        if not self.available or len(self.series) < 2:
            return {"postgres_cpu_s": None}
        a, b = self._at(start), self._at(end)
        own, aux, others, server = (y - x for x, y in zip(a, b, strict=True))
        span = max(1e-9, end - start)
        pg = own + aux
        figures: dict[str, Any] = {
            "postgres_cpu_s": round(pg, 3),
            "postgres_own_db_cpu_s": round(own, 3),
            "postgres_aux_cpu_s": round(aux, 3),
            "postgres_cpu_cores": round(pg / span, 3),
            "postgres_others_cpu_cores": round(others / span, 3),
            "postgres_cpu_us_per_event": round(pg / delivered * 1e6, 2) if delivered else None,
            "postgres_samples": len(self.series),
        }
        if server_cpu_s:
            figures["postgres_window_check"] = round(server / server_cpu_s, 3)
        return figures


# --- the machine ---------------------------------------------------------------------


def fsync_latency(directory: Path, count: int) -> dict[str, float]:
    """Write 4 KiB and fsync, ``count`` times, where the SQLite logs live: p50/p99/max in ms."""
    path = directory / "fsync.probe"
    samples: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(count):
            os.write(fd, block)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 3)

    return {"samples": count, "p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": rank(1.0)}


def machine_info(work: Path) -> dict[str, Any]:
    """What the figures were measured on: CPUs, versions, load."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for dist in ("agentcast", "uvicorn", "starlette", "websockets", "uvloop", "msgspec", "psutil"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    versions["python"] = platform.python_version()
    versions["sqlite"] = sqlite3.sqlite_version
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "versions": versions,
        "work_dir": str(work),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
