"""Real ``agentcast serve`` processes on 127.0.0.1 and a raw WebSocket client for them.

Everything here speaks only to servers it started itself, over loopback, with
docs/protocol.md frames written out by hand: the end-to-end tests check the wire,
not the project's own client.

Every deadline here is scaled by ``AGENTCAST_TEST_TIME_SCALE`` (tests/utils.py),
and that variable is passed on to the child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agentcast.events import TERMINAL_TYPES
from tests.utils import MS, seconds

ROOT = Path(__file__).resolve().parents[2]
#: Every key of the event envelope (docs/events.md); no more, no fewer.
ENVELOPE_KEYS = frozenset(
    {"v", "type", "event_id", "thread_id", "run_id", "parent_run_id", "seq", "ts", "agent", "data"}
)
#: Until a started server answers ``/healthz``.
START_TIMEOUT_S = seconds(30.0)
#: Until a server process exits once told to (or a one-shot CLI command finishes).
EXIT_TIMEOUT_S = seconds(20.0)
CLI_TIMEOUT_S = seconds(30.0)
#: One HTTP request, one WebSocket handshake.
REQUEST_TIMEOUT_S = seconds(10.0)
#: Until the next WebSocket message.
RECV_TIMEOUT_S = seconds(15.0)
#: Until a whole run has reached its terminal event.
RUN_TIMEOUT_S = seconds(30.0)
#: The environment variable of the test time scale, kept for the child processes.
SCALE_VAR = "AGENTCAST_TEST_TIME_SCALE"


def free_port() -> int:
    """A TCP port nobody listens on right now (the server binds it moments later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any ``AGENTCAST_*`` the developer may have set.

    The test time scale is the one ``AGENTCAST_*`` variable kept: it is the tests'
    own, and a child with time bounds of its own scales them by it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAST_") or k == SCALE_VAR}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1", **extra)
    return env


def cli(*args: str, timeout: float = CLI_TIMEOUT_S, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agentcast ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "agentcast", *args],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Server:
    """One ``agentcast serve`` child process."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """The HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint."""
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def token(self) -> str:
        """The development token ``serve`` wrote to the data directory."""
        return (self.data_dir / "dev-token").read_text().strip()

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def http(self, token: str | None = None) -> httpx.Client:
        """A synchronous HTTP client authenticated with ``token`` (default: the dev token)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=REQUEST_TIMEOUT_S,
        )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``/healthz`` until it answers 200; fail with the log if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=seconds(1.0)).status_code == 200:
                    return
            time.sleep(50 * MS)
        raise AssertionError(f"server not healthy after {timeout}s:\n{self.log()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server process."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to exit and return its exit code."""
        return self.proc.wait(timeout=timeout)


@dataclass
class Servers:
    """Starts servers for one test and kills whatever is left at the end."""

    root: Path
    started: list[Server] = field(default_factory=list)

    def start(
        self,
        data_dir: Path | None = None,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Server:
        """Start ``agentcast serve`` on a free port (and a new data dir unless given)."""
        data_dir = data_dir or self.root / f"data{len(self.started)}"
        port = port or free_port()
        log_path = self.root / f"server{len(self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentcast", "serve", "--dev", "--port", str(port),
                 "--data-dir", str(data_dir), *args],
                cwd=ROOT,
                env=clean_env(**(env or {})),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server = Server(data_dir, port, proc, log_path)
        self.started.append(server)
        if wait:
            server.wait_healthy()
        return server

    def close(self) -> None:
        """SIGKILL every server still running and reap it."""
        for server in self.started:
            if server.proc.poll() is None:
                server.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=EXIT_TIMEOUT_S)


# --- a raw WebSocket client -----------------------------------------------------------


async def connect(server: Server, token: str | None = None) -> ClientConnection:
    """Open ``/v1/ws`` with a bearer token and check the first frame."""
    ws = await websockets.connect(
        server.ws_url,
        additional_headers={"Authorization": f"Bearer {token or server.token}"},
        open_timeout=REQUEST_TIMEOUT_S,
        close_timeout=REQUEST_TIMEOUT_S,
    )
    hello = json.loads(await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT_S))
    assert hello["type"] == "connection_established", hello
    return ws


async def frames(ws: ClientConnection, timeout: float = RECV_TIMEOUT_S) -> list[dict[str, Any]]:
    """The next message, as a list of frames (a batch frame is a JSON array)."""
    data = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return data if isinstance(data, list) else [data]


async def request(ws: ClientConnection, frame: dict[str, Any], rid: str) -> dict[str, Any]:
    """Send ``frame`` with ``id`` and return the reply whose ``ref`` echoes it.

    Frames that arrive before the reply are not expected by these tests.
    """
    await ws.send(json.dumps({**frame, "id": rid}))
    while True:
        for item in await frames(ws):
            assert item.get("ref") == rid, f"unexpected frame before the reply: {item}"
            return item


async def events_until_terminal(
    ws: ClientConnection, run_id: str, timeout: float = RUN_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Every event received until ``run_id``'s terminal event (included)."""
    received: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        for item in await frames(ws, timeout=max(left, MS)):
            assert "seq" in item, f"unexpected control frame: {item}"
            received.append(item)
            if item["run_id"] == run_id and item["type"] in TERMINAL_TYPES:
                return received


async def events_until(
    ws: ClientConnection, count: int, timeout: float = RECV_TIMEOUT_S
) -> list[dict[str, Any]]:
    """At least ``count`` events."""
    received: list[dict[str, Any]] = []
    while len(received) < count:
        received += [f for f in await frames(ws, timeout) if "seq" in f]
    return received


async def read_until_closed(
    ws: ClientConnection, timeout: float = RECV_TIMEOUT_S
) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every frame until the server closes the connection, and how it closed."""
    received: list[dict[str, Any]] = []
    while True:
        try:
            received += await frames(ws, timeout)
        except ConnectionClosed as closed:
            return received, closed
