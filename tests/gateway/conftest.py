"""Fixtures for the gateway tests: an app, clients, a live server; both event logs.

The app and the live WebSocket server use the memory log unless a test
parametrizes ``log_backend`` (a fixture overridden by direct parametrization):
``@BOTH_LOGS`` runs it on the memory and on the SQLite log. It marks the tests
of delivery, resume, run lifecycle and cancel, where the two logs' different
commit paths matter; the rest stay on the memory log to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette

from agentcast.agents import builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.gateway.app import agentcast_lifespan, create_app
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings
from tests.gateway.ws_support import LiveServer, ServerFactory
from tests.utils import wait_until

#: Long enough for HS256 (PyJWT warns below 32 bytes).
SECRET = "test-secret-" + "0123456789abcdef" * 4

AppFactory = Callable[..., Awaitable[Starlette]]
ClientFactory = Callable[..., httpx.AsyncClient]

#: Run a test on both event logs: ``@BOTH_LOGS`` above a test that uses the
#: ``app`` (HTTP, SSE) or ``ws_server`` fixtures, or that takes ``log_backend``.
BOTH_LOGS = pytest.mark.parametrize("log_backend", ["memory", "sqlite"])


@pytest.fixture
def log_backend() -> str:
    """The event log of ``app`` and ``ws_server``: memory, unless a test parametrizes it."""
    return "memory"


def make_app(tmp_path: Path, **overrides: Any) -> Starlette:
    """An app with a fast engine (memory log unless ``log_backend`` says otherwise); not started."""
    engine_overrides = overrides.pop("engine_settings", {})
    overrides.setdefault("log_backend", "memory")
    # Tests poll over HTTP every few milliseconds; the rate limit has tests of its own.
    overrides.setdefault("http_rate_per_s", 1e6)
    overrides.setdefault("http_rate_burst", 1_000_000)
    settings = GatewaySettings(data_dir=tmp_path, jwt_secret=SECRET, **overrides)
    engine_settings = EngineSettings(
        data_dir=tmp_path,
        log_backend=settings.log_backend,
        health_interval_s=3600,
        text_coalesce_ms=5,
    ).with_(**engine_overrides)
    engine = Engine(engine_settings, builtin_registry(demo_pace=0))
    return create_app(settings, engine=engine)


def gateway_of(app: Starlette) -> Gateway:
    """The app's Gateway."""
    gateway = app.state.agentcast
    assert isinstance(gateway, Gateway)
    return gateway


@pytest_asyncio.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Build started apps; every one is shut down after the test."""
    stack: list[Any] = []

    async def factory(**overrides: Any) -> Starlette:
        app = make_app(tmp_path / f"app{len(stack)}", **overrides)
        cm = agentcast_lifespan(app)
        await cm.__aenter__()
        stack.append(cm)
        return app

    yield factory
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest_asyncio.fixture
async def app(app_factory: AppFactory, log_backend: str) -> Starlette:
    """One started app with default settings, on the test's event log."""
    return await app_factory(log_backend=log_backend)


@pytest_asyncio.fixture
async def ws_server(make_ws_server: ServerFactory, log_backend: str) -> LiveServer:
    """One live server with the default settings, on the test's event log."""
    return await make_ws_server(log_backend=log_backend)


@pytest.fixture
def gateway(app: Starlette) -> Gateway:
    """The started app's Gateway."""
    return gateway_of(app)


@pytest_asyncio.fixture
async def client_for(app: Starlette) -> AsyncIterator[ClientFactory]:
    """In-process HTTP clients for ``app``, authenticated as a user (or not at all)."""
    clients: list[httpx.AsyncClient] = []

    def factory(user: str | None = "alice", token: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if token is None and user is not None:
            token = gateway_of(app).auth.mint_token(user)
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://test", headers=headers
        )
        clients.append(c)
        return c

    yield factory
    for c in clients:
        await c.aclose()


@pytest.fixture
def alice(client_for: ClientFactory) -> httpx.AsyncClient:
    """A client authenticated as alice."""
    return client_for("alice")


@pytest.fixture
def bob(client_for: ClientFactory) -> httpx.AsyncClient:
    """A client authenticated as bob."""
    return client_for("bob")


async def start_run(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /v1/runs and return the accepted run (asserting 202)."""
    r = await client.post("/v1/runs", json=body)
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


TERMINAL = ("agent_completed", "agent_error", "agent_cancelled")


async def wait_terminal(
    client: httpx.AsyncClient, thread_id: str, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Poll the events endpoint until ``run_id`` (or any top-level run) ended; return all events."""
    events: list[dict[str, Any]] = []

    def ended(e: dict[str, Any]) -> bool:
        if e["type"] not in TERMINAL or e["parent_run_id"] is not None:
            return False
        return run_id is None or e["run_id"] == run_id

    async def done() -> bool:
        r = await client.get(f"/v1/threads/{thread_id}/events", params={"limit": 1000})
        events[:] = r.json()["events"]
        return any(ended(e) for e in events)

    await wait_until(done, message="the run's terminal event")
    return events


@pytest_asyncio.fixture
async def live_url(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (real streaming, for SSE)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started, message="uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # Invariant 9's order: the gateway ends its streams, then the server stops.
        await gateway_of(app).shutdown(grace_s=0)
        server.should_exit = True
        await task
        sock.close()
