"""Fixtures of the end-to-end tests: real servers, started and always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Server, Servers


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Start servers for one test; every one still running is killed afterwards."""
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that neither stop nor crash it, with a user's agent too."""
    started = Servers(tmp_path_factory.mktemp("shared"))
    try:
        yield started.start(
            None, "--agents", "agentcast.agents.builtin:registry",
            "--agents", "tests.e2e.my_agents:registry",
        )  # fmt: skip
    finally:
        started.close()
