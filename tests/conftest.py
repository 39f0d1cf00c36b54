"""Fixtures shared by every test module."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agentcast.agents import AgentRegistry, builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from tests.gateway.ws_support import LiveServer, ServerFactory, ws_servers

REQUIRE_SERVICES = os.environ.get("AGENTCAST_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a service-backed test, or fail it when services are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (AGENTCAST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


# --- engines -------------------------------------------------------------------


EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per log backend."""
    return str(request.param)


@pytest_asyncio.fixture
async def make_engine(tmp_path: Path, backend: str) -> AsyncIterator[EngineFactory]:
    """Build started engines on the test's backend; all are shut down afterwards."""
    engines: list[Engine] = []

    async def factory(registry: AgentRegistry | None = None, **overrides: Any) -> Engine:
        settings = EngineSettings(
            data_dir=tmp_path / f"data{len(engines)}",
            log_backend=backend,  # type: ignore[arg-type]
            health_interval_s=3600,
            recovery_base_s=0.01,
            recovery_max_s=0.05,
            text_coalesce_ms=5,
        ).with_(**overrides)
        engine = Engine(settings, registry if registry is not None else builtin_registry())
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.shutdown(grace_s=0)


# --- live WebSocket servers (tests/gateway/ws_support.py) -----------------------


@pytest_asyncio.fixture
async def make_ws_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start real uvicorn servers on 127.0.0.1; all are stopped afterwards."""
    async with ws_servers(tmp_path) as factory:
        yield factory


@pytest_asyncio.fixture
async def ws_server(make_ws_server: ServerFactory) -> LiveServer:
    """One live server with the default settings."""
    return await make_ws_server()
