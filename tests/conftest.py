"""Fixtures shared by every test module, and the test time scale's hooks.

The hooks here (1) mark ``timing`` every test of the modules in
:data:`TIMING_SENSITIVE`, which ``make test-starved`` runs on one starved CPU,
and (2) scale pytest-timeout's per-test timeouts by ``AGENTCAST_TEST_TIME_SCALE``
(tests/utils.py): the configured one (``--timeout``, ``PYTEST_TIMEOUT`` or the
``timeout`` ini value) and every ``@pytest.mark.timeout(...)``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest
import pytest_asyncio

from agentcast.agents import AgentRegistry, builtin_registry
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from tests.gateway.ws_support import LiveServer, ServerFactory, ws_servers
from tests.pg_support import (  # the fixture, for every test module
    drop_shared_database,
    pg_url,  # noqa: F401
)
from tests.utils import SCALE

REQUIRE_SERVICES = os.environ.get("AGENTCAST_REQUIRE_SERVICES") == "1"

#: Test modules (``.py``) and directories (``/``), relative to the repository, whose
#: tests have wall-clock bounds or race real servers, threads and processes: every
#: test in them is marked ``timing``. Listed here so that no module has to say it.
TIMING_SENSITIVE: Final = (
    "tests/runner/",  # runs, restarts, shutdown grace, a crashing child process
    "tests/llm/",  # a paced, stalled or dropped model stream and its disconnect
    "tests/agents/test_context.py",  # text coalescing windows
    "tests/agents/test_tools.py",  # tool timeouts and concurrency
    "tests/agents/test_builtin.py",  # the demo's pace (finishes within three seconds)
    "tests/agents/test_sanitize.py",  # a time bound on hostile input
    "tests/test_bridge.py",  # recovery backoff, health checks
    "tests/test_sqlite_db.py",  # group commit behind a held writer
    "tests/test_client.py",  # reconnects, request timeouts
    "tests/log/test_follower.py",
    "tests/log/test_contract.py",  # followers woken by commits, "nothing more within"
    "tests/log/test_stateful.py",  # a per-step timeout
    "tests/log/test_sqlite.py",  # commits held and released, a dead writer restarted
    "tests/log/test_restore.py",  # restarts of a data directory
    "tests/test_bridge_faults.py",  # append deadlines, held commits
    "tests/test_cli_rotate_epochs.py",  # a server process holding the lock
    "tests/gateway/test_ws.py",
    "tests/gateway/test_sse.py",
    "tests/gateway/test_http.py",  # runs to their terminal event
    "tests/gateway/test_ws_fuzz.py",  # a live server in a thread, receive timeouts
    "tests/gateway/test_story_ws.py",  # generated stories of runs, run timeouts
    "tests/store/",  # thread order follows the wall clock
    "tests/e2e/",  # real server processes
    "tests/bench/",  # the load benchmark's smoke run, with its own deadlines
    "tests/web/",  # a real server and a browser
)


def is_timing_sensitive(relpath: str) -> bool:
    """Whether the test file at ``relpath`` (posix, from the repository root) is listed."""
    return any(
        relpath.startswith(entry) if entry.endswith("/") else relpath == entry
        for entry in TIMING_SENSITIVE
    )


def _configured_timeout(config: pytest.Config) -> float | None:
    """pytest-timeout's global timeout, looked up in its own order: option, env, ini."""
    value = config.getoption("timeout", None)
    if value is None:
        value = os.environ.get("PYTEST_TIMEOUT") or None
    if value is None:
        value = config.getini("timeout") or None
    return None if value is None else float(value)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Scale the global per-test timeout before pytest-timeout reads it.

    pytest-timeout resolves its setting in its own ``pytest_configure``, and the
    command-line option comes first there; so the scaled value is put in the
    option, which also keeps ``--timeout`` and ``PYTEST_TIMEOUT`` scaled.
    """
    if SCALE == 1 or not config.pluginmanager.hasplugin("timeout"):
        return
    timeout = _configured_timeout(config)
    if timeout:  # None or 0: no timeout, nothing to scale
        config.option.timeout = timeout * SCALE


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the timing-sensitive tests; scale every ``timeout`` marker.

    ``tryfirst`` so that ``-m timing`` (deselection by the mark plugin) sees the marks.
    """
    for item in items:
        try:
            relpath = item.path.relative_to(config.rootpath).as_posix()
        except ValueError:  # a test file outside the repository
            relpath = item.path.as_posix()
        if is_timing_sensitive(relpath):
            item.add_marker(pytest.mark.timing)
        if SCALE != 1:
            _scale_timeout_marker(item)


def _scale_timeout_marker(item: pytest.Item) -> None:
    """Put a scaled copy of the test's closest ``timeout`` marker in front of it."""
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return
    args, kwargs = list(marker.args), dict(marker.kwargs)
    if args:
        timeout, rest = args[0], args[1:]
    else:
        timeout, rest = kwargs.pop("timeout", None), []
    if not timeout:  # None or 0: no timeout, nothing to scale
        return
    item.add_marker(pytest.mark.timeout(float(timeout) * SCALE, *rest, **kwargs), append=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the session's PostgreSQL test database (tests.pg_support), if one was made."""
    asyncio.run(drop_shared_database())


def pytest_report_header(config: pytest.Config) -> str:
    """Say which time scale the run uses (pytest-timeout's header shows the scaled timeout)."""
    return f"AGENTCAST_TEST_TIME_SCALE={SCALE:g}"


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
