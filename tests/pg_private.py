"""A private PostgreSQL server that a test may stop, kill and start again.

The shared server of ``AGENTCAST_TEST_PG_URL`` (tests/pg_support.py) must
never be stopped: other tests use it at the same time. Outage tests need a
server of their own, on a free port, with its own data directory, that they
can shut down (``fast`` or ``immediate``), SIGKILL and restart under a live
engine.

``initdb`` takes seconds, so it runs once per test session (the
:func:`pg_template` fixture): the template cluster is initialised, started
once to create the ``agentcast`` database and apply every migration, and
stopped cleanly. Each test that asks for :func:`private_pg` gets a copy of it
(``cp -a``), started on its own port; tests change their server's state
(stopped, killed, restarted), so none is shared between tests.

``initdb`` and ``pg_ctl`` refuse to run as root: as root every command runs
through ``runuser -u postgres --`` on directories owned by ``postgres``;
as anyone else it runs as that user. Without the binaries (``pg_config
--bindir``, or ``/usr/lib/postgresql/*/bin``) — or as root without
``runuser`` or a ``postgres`` user — the tests are skipped with the reason,
or fail with ``AGENTCAST_REQUIRE_SERVICES=1``.

The servers are stopped at teardown whatever the test did (a bounded
``immediate`` stop, then SIGKILL of every process of the server), and their
directories removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import asyncpg
import psutil
import pytest

from agentcast.db.pg_migrate import apply_migrations
from tests.utils import seconds

__all__ = [
    "DATABASE",
    "PgTools",
    "PrivatePostgres",
    "StopMode",
    "find_tools",
    "pg_template",
    "private_pg",
]

#: The database created (and migrated) in every private server.
DATABASE: Final = "agentcast"
#: The superuser ``initdb`` creates (trust authentication: no password).
_SUPERUSER: Final = "postgres"
#: The account the server runs as when the tests run as root.
_OS_USER: Final = "postgres"

StopMode = Literal["smart", "fast", "immediate"]


def _start_timeout_s() -> float:
    """Bound of a server start or stop (``pg_ctl -t``): recovery after a kill included."""
    return seconds(30.0)


def _command_timeout_s() -> float:
    """Bound of any one command (initdb, cp) beyond ``pg_ctl``'s own."""
    return seconds(60.0)


@dataclass(frozen=True, slots=True)
class PgTools:
    """Where the server binaries are and how to run them as a user the server accepts."""

    bindir: Path
    #: ``["runuser", "-u", "postgres", "--"]`` as root, ``[]`` otherwise.
    prefix: tuple[str, ...]
    #: ``(uid, gid)`` to chown directories to as root; ``None`` otherwise.
    owner: tuple[int, int] | None

    def command(self, tool: str, *args: str) -> list[str]:
        """The argv that runs ``tool`` (a server binary) with ``args``."""
        return [*self.prefix, str(self.bindir / tool), *args]

    def as_user(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` as the server's user."""
        return [*self.prefix, *argv]

    def own(self, path: Path) -> None:
        """Give ``path`` to the server's user (as root), private to it."""
        if self.owner is not None:
            os.chown(path, *self.owner)
        path.chmod(0o700)


def find_tools() -> PgTools | str:
    """The server binaries and how to run them, or why they cannot be used here."""
    bindir: Path | None = None
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and (Path(out) / "pg_ctl").exists():
                bindir = Path(out)
    if bindir is None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if found:
            bindir = Path(found[-1]).parent
    if bindir is None or not (bindir / "initdb").exists():
        return "PostgreSQL server binaries (initdb, pg_ctl) not found (pg_config --bindir)"
    if os.geteuid() != 0:
        return PgTools(bindir, (), None)
    runuser = shutil.which("runuser")
    if runuser is None:
        return "running as root and runuser is missing (initdb refuses to run as root)"
    try:
        entry = pwd.getpwnam(_OS_USER)
    except KeyError:
        return f"running as root and there is no {_OS_USER!r} user to run the server as"
    return PgTools(bindir, (runuser, "-u", _OS_USER, "--"), (entry.pw_uid, entry.pw_gid))


def _run(argv: list[str], *, timeout: float, what: str) -> None:
    """Run ``argv``; a failure raises with its output (the reason a server did not start)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} did not finish within {timeout:g}s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}): {done.stdout.strip()} {done.stderr.strip()}"
        )


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on a loop of its own, whatever loop this thread runs."""
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(factory())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=main, name="pg-private-setup")
    worker.start()
    worker.join(_command_timeout_s())
    if worker.is_alive():
        raise RuntimeError("setting up the private PostgreSQL database did not finish")
    if errors:
        raise errors[0]


class PrivatePostgres:
    """One PostgreSQL server in a directory of its own, on a port of its own.

    Args:
        tools: The binaries and the user to run them as.
        root: A directory owned by the server's user: ``data/`` (the
            cluster), ``sock/`` (its Unix socket) and ``server.log`` live there.
        port: The TCP port it listens on (127.0.0.1 only).
    """

    def __init__(self, tools: PgTools, root: Path, port: int) -> None:
        self.tools = tools
        self.root = root
        self.port = port
        self.data = root / "data"
        self.sock = root / "sock"
        self.logfile = root / "server.log"

    def __repr__(self) -> str:
        return f"PrivatePostgres(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        """The URL of the migrated ``agentcast`` database."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """The URL of ``database`` on this server."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from ``postmaster.pid``, if that process is alive."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    @property
    def running(self) -> bool:
        """Whether the server accepts connections now (``pg_ctl status``, without waiting)."""
        if self.pid is None:
            return False
        done = subprocess.run(
            self.tools.command("pg_ctl", "-D", str(self.data), "status"),
            capture_output=True,
            timeout=_command_timeout_s(),
        )
        return done.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after recovery, if killed)."""
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=60"
        )
        argv = self.tools.command(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options,
            "-t", str(int(_start_timeout_s())), "-w", "start",
        )  # fmt: skip
        try:
            _run(argv, timeout=_start_timeout_s() + 10, what=f"starting {self!r}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{self.log_tail()}") from None

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut the server down (``pg_ctl stop -m mode``) and wait until it is gone.

        ``immediate`` is a crash as far as the data goes (recovery at the next
        start) but lets every client see its connection end at once.
        """
        argv = self.tools.command(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-t", str(int(_start_timeout_s())),
            "-w", "stop",
        )  # fmt: skip
        _run(argv, timeout=_start_timeout_s() + 10, what=f"stopping {self!r} ({mode})")

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (``mode``), then start again on the same port and directory."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its backends are gone too.

        Backends notice their postmaster's death and exit on their own; any
        that lingers is killed as well, because a new postmaster refuses
        to start while one of them still holds the old shared memory.
        """
        pid = self.pid
        if pid is None:
            return
        try:
            postmaster = psutil.Process(pid)
            children = postmaster.children(recursive=True)
            postmaster.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return
        gone_by = time.monotonic() + seconds(10.0)
        _, alive = psutil.wait_procs([postmaster, *children], timeout=seconds(5.0))
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(alive, timeout=max(0.1, gone_by - time.monotonic()))

    async def start_async(self) -> None:
        """:meth:`start` off the event loop (the engine under test keeps running)."""
        await asyncio.to_thread(self.start)

    async def stop_async(self, mode: StopMode = "fast") -> None:
        """:meth:`stop` off the event loop."""
        await asyncio.to_thread(self.stop, mode)

    async def restart_async(self, mode: StopMode = "fast") -> None:
        """:meth:`restart` off the event loop."""
        await asyncio.to_thread(self.restart, mode)

    async def kill_async(self) -> None:
        """:meth:`kill` off the event loop."""
        await asyncio.to_thread(self.kill)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def destroy(self) -> None:
        """Stop the server however it is (bounded), then remove its directory."""
        try:
            if self.pid is not None:
                try:
                    self.stop("immediate")
                except (RuntimeError, OSError, subprocess.SubprocessError):
                    self.kill()
        finally:
            if self.pid is not None:  # pragma: no cover - a stop that lied
                self.kill()
            shutil.rmtree(self.root, ignore_errors=True)


def _new_root(tools: PgTools) -> Path:
    """An empty directory for one cluster, owned by the server's user."""
    root = Path(tempfile.mkdtemp(prefix="agentcast-pg-"))
    tools.own(root)
    return root


def _make_template(tools: PgTools) -> PrivatePostgres:
    """initdb a cluster, create and migrate the ``agentcast`` database, stop it cleanly."""
    template = PrivatePostgres(tools, _new_root(tools), _free_port())
    try:
        _run(
            tools.command(
                "initdb", "-D", str(template.data), "-U", _SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            ),
            timeout=_command_timeout_s(),
            what="initdb",
        )  # fmt: skip
        _run(tools.as_user("mkdir", "-m", "700", str(template.sock)), timeout=10, what="mkdir")
        template.start()

        async def migrate() -> None:
            admin = await asyncpg.connect(template.url_for("postgres"), timeout=seconds(10.0))
            try:
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await admin.close()
            conn = await asyncpg.connect(template.url, timeout=seconds(10.0))
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()

        _run_coroutine(migrate)
        template.stop("fast")  # a clean checkpoint: copies start without recovery
    except BaseException:
        template.destroy()
        raise
    return template


def _copy(template: PrivatePostgres) -> PrivatePostgres:
    """A stopped copy of ``template`` on a fresh port."""
    tools = template.tools
    root = _new_root(tools)
    server = PrivatePostgres(tools, root, _free_port())
    try:
        _run(
            tools.as_user("cp", "-a", str(template.data), str(server.data)),
            timeout=_command_timeout_s(),
            what="copying the template cluster",
        )
        _run(tools.as_user("mkdir", "-m", "700", str(server.sock)), timeout=10, what="mkdir")
    except BaseException:
        server.destroy()
        raise
    return server


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PrivatePostgres]:
    """One initialised, migrated, stopped cluster per session, copied for each test."""
    from tests.conftest import skip_or_fail  # here: conftest imports the test modules' fixtures

    tools = find_tools()
    if isinstance(tools, str):
        skip_or_fail(f"no private PostgreSQL server: {tools}")
        raise AssertionError("unreachable")  # skip_or_fail raises
    template = _make_template(tools)
    try:
        yield template
    finally:
        template.destroy()


@pytest.fixture
def private_pg(pg_template: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """A started server of the test's own (a copy of the template), destroyed afterwards."""
    server = _copy(pg_template)
    try:
        server.start()
        yield server
    finally:
        server.destroy()
