"""A real uvicorn server in the test's event loop, and raw ``websockets`` clients for it.

The app is the real ``create_app`` on the memory backend; tests reach into
``LiveServer.gateway`` only to observe, never to drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from agentcast.agents import RunContext, builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.gateway.app import create_app
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings
from agentcast.gateway.ws import WsConnection
from agentcast.log.base import EventDraft, StoredEvent
from tests.utils import seconds, wait_until

#: Long enough for HS256 (PyJWT warns below 32 bytes).
SECRET = "test-secret-" + "0123456789abcdef" * 4
RECV_TIMEOUT = seconds(5.0)


@dataclass
class LiveServer:
    """One uvicorn server on 127.0.0.1 serving the agentcast app."""

    settings: GatewaySettings
    app: Any
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    clients: list[ClientConnection] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.agentcast
        return gateway

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def token(self, user: str = "alice", ttl_s: float | None = None) -> str:
        return self.gateway.auth.mint_token(user, ttl_s=ttl_s)

    def ws_connections(self) -> list[WsConnection]:
        return [c for c in self.gateway.connections if isinstance(c, WsConnection)]

    async def connect(
        self, user: str = "alice", *, batch: bool = False, **kwargs: Any
    ) -> ClientConnection:
        """A raw client, past ``connection_established``."""
        ws = await self.connect_raw(user, batch=batch, **kwargs)
        first = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
        assert first["type"] == "connection_established", first
        assert first["user_id"] == user
        return ws

    async def connect_raw(
        self, user: str = "alice", *, batch: bool = False, token: str | None = None, **kwargs: Any
    ) -> ClientConnection:
        url = self.url + ("?batch=1" if batch else "")
        kwargs.setdefault("max_size", None)
        token = token if token is not None else self.token(user)
        ws = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        self.clients.append(ws)
        return ws


class AppendGate:
    """Holds back every append of an event of ``types`` until :meth:`release`.

    Wraps the engine's log: while held, the event (and everything appended
    after it) is not committed, so no reader anywhere can see it yet. Tests
    act while it is held, then release it, instead of racing the commit.
    """

    def __init__(self, log: Any, types: frozenset[str]) -> None:
        self.held = asyncio.Event()  # an append of one of ``types`` is waiting
        self._open = asyncio.Event()
        inner = log.append

        async def append(drafts: Sequence[EventDraft]) -> list[StoredEvent]:
            if not self._open.is_set() and any(d.type in types for d in drafts):
                self.held.set()
                await self._open.wait()
            result: list[StoredEvent] = await inner(drafts)
            return result

        log.append = append

    def release(self) -> None:
        """Let the held append (and every later one) through."""
        self._open.set()


async def blob(ctx: RunContext) -> str:
    """Test agent: message ``"N SIZE"`` emits N ``custom`` events of SIZE bytes, at once."""
    count, size = (int(x) for x in ctx.message.split())
    for i in range(count):
        await ctx.custom("blob", f"{i}:" + "x" * size)
    return f"{count} blobs"


async def start_server(
    tmp_path: Path, *, uvicorn_max_size: int | None = None, port: int = 0, **overrides: Any
) -> LiveServer:
    """Serve a fresh app; ``uvicorn_max_size`` lets a test bypass uvicorn's own frame limit."""
    values: dict[str, Any] = {
        "log_backend": "memory",
        "data_dir": tmp_path,
        "jwt_secret": SECRET,
        "default_agent": "echo",
        "shutdown_grace_s": 0.5,
        # Tests poll over HTTP every few milliseconds; the rate limit has tests of its own.
        "http_rate_per_s": 1e6,
        "http_rate_burst": 1_000_000,
    }
    engine_overrides = overrides.pop("engine_settings", {})
    values.update(overrides)
    settings = GatewaySettings(**values)
    engine_settings = EngineSettings(
        data_dir=tmp_path,
        log_backend=settings.log_backend,
        health_interval_s=3600,
        text_coalesce_ms=5,
        shutdown_grace_s=0.5,
    ).with_(**engine_overrides)
    registry = builtin_registry(demo_pace=0)
    registry.register(blob, name="blob")
    engine = Engine(engine_settings, registry)
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_max_size=uvicorn_max_size or settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), message="uvicorn started")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(settings, app, server, task, port)


async def stop_server(live: LiveServer) -> None:
    """Close the clients, drain and close the gateway (invariant 9's order), stop uvicorn."""
    for ws in live.clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), seconds(1.0))
    await live.gateway.shutdown(grace_s=0)
    live.server.should_exit = True
    await asyncio.wait_for(live.task, seconds(15))


ServerFactory = Callable[..., Awaitable[LiveServer]]


@contextlib.asynccontextmanager
async def ws_servers(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers with settings overrides; all are stopped on exit (fixtures wrap this)."""
    started: list[LiveServer] = []

    async def factory(**overrides: Any) -> LiveServer:
        live = await start_server(tmp_path / f"ws{len(started)}", **overrides)
        started.append(live)
        return live

    try:
        yield factory
    finally:
        for live in started:
            await stop_server(live)


class StalledClient:
    """A WebSocket client that reads nothing until told to: a consumer that stopped reading.

    Sans-I/O ``websockets`` over a plain socket with a tiny receive buffer, so
    the server's send path fills up quickly (a library client would keep
    reading into its own buffers).
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol

    @classmethod
    async def connect(cls, live: LiveServer, user: str = "alice") -> StalledClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", live.port))
        protocol = ClientProtocol(parse_uri(live.url), max_size=None)
        request = protocol.connect()
        request.headers["Authorization"] = f"Bearer {live.token(user)}"
        protocol.send_request(request)
        client = cls(sock, protocol)
        await client._flush()
        while protocol.state is State.CONNECTING:
            protocol.receive_data(await loop.sock_recv(sock, 65536))
        assert protocol.state is State.OPEN, protocol.handshake_exc
        return client

    async def send(self, **frame: Any) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        await self._flush()

    async def read_all(self, timeout: float | None = None) -> tuple[list[Any], int | None]:
        """Resume reading: every frame until the server closes; and its close code."""
        loop = asyncio.get_running_loop()
        frames: list[Any] = []
        async with asyncio.timeout(seconds(10.0) if timeout is None else timeout):
            while True:
                data = await loop.sock_recv(self.sock, 65536)
                if data:
                    self.protocol.receive_data(data)
                else:
                    self.protocol.receive_eof()
                for event in self.protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        frames.append(json.loads(event.data))
                await self._flush()
                if self.protocol.state is State.CLOSED or not data:
                    rcvd = self.protocol.close_rcvd
                    return frames, rcvd.code if rcvd is not None else None

    async def read_some(self) -> tuple[list[Any], bool]:
        """Read what the next chunk of bytes completes; and whether the connection ended."""
        loop = asyncio.get_running_loop()
        data = await loop.sock_recv(self.sock, 65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        frames = [
            json.loads(e.data)
            for e in self.protocol.events_received()
            if isinstance(e, Frame) and e.opcode is Opcode.TEXT
        ]
        await self._flush()
        return frames, not data

    def close(self) -> None:
        self.sock.close()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for chunk in self.protocol.data_to_send():
            if chunk:
                await loop.sock_sendall(self.sock, chunk)
