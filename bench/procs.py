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
import json
import math
import os
import platform
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from bench.config import REPO, Target
from bench.stats import raise_nofile_limit

__all__ = [
    "LoadGen",
    "Server",
    "fsync_latency",
    "machine_info",
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
                "--log-backend",
                str(target.backend),
                "--log-level",
                "warning",
            ]
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
        """Stop the process (bounded) and close its log."""
        stop_process(self.proc)
        self._log.close()

    def settle(self, *, idle_cores: float = 0.05, span: float = 0.5, limit: float = 20.0) -> float:
        """Wait until the server is idle (CPU under ``idle_cores`` over ``span``); seconds waited.

        A step past W2's knee leaves a backlog (events still being sent, a
        long WAL to checkpoint); the next step must not pay for it. Bounded by
        ``limit``: a server that never calms down is measured as it is.
        """
        proc = psutil.Process(self.pid)
        start = time.monotonic()
        while time.monotonic() - start < limit:
            before = proc.cpu_times()
            time.sleep(span)
            after = proc.cpu_times()
            used = (after.user + after.system) - (before.user + before.system)
            if used / span < idle_cores:
                break
        return time.monotonic() - start

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
