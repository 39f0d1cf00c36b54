"""The ``replay_server`` fixture: a scripted OpenAI-compatible server on 127.0.0.1.

The server runs in a background thread with its own event loop, so one fixture
serves async tests (pytest-asyncio's per-test loop, ``asyncio_mode = "auto"``)
and synchronous ones (a CLI test whose code runs its own loop) alike, and its
work does not share the loop under test. Use it as::

    async def test_x(replay_server: ReplayServer) -> None:
        replay_server.queue(scenario(text("Hi"), stop()))
        client = openai.AsyncOpenAI(
            base_url=replay_server.base_url, api_key="test", max_retries=0
        )
        ...
        assert replay_server.completions[0].body["model"] == "m"

At teardown the fixture fails the test if a chat completion request found no
scenario queued (it was answered 500 with ``x-should-retry: false``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.llm.replay import ReplayServer

#: The key the agents' tests give the SDK; it must never reach a user.
MODEL_KEY = "sk-test-secret-key-0123456789"


@pytest.fixture
def replay_server() -> Iterator[ReplayServer]:
    """A running :class:`ReplayServer`: ``.base_url``, ``.queue(...)``, ``.requests``."""
    server = ReplayServer()
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()
    unscripted = server.unscripted
    if unscripted:
        pytest.fail(
            f"replay server: {len(unscripted)} request(s) with no scenario queued "
            f"(first messages: {unscripted[0].messages!r})"
        )


@pytest.fixture
def backend() -> str:
    """The memory log only: what is tested here is the agent, not the log."""
    return "memory"


@pytest.fixture(params=["httpx", "aiohttp"])
async def model_client(
    replay_server: ReplayServer, request: pytest.FixtureRequest
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK's client for the replay server, over each of its two HTTP transports.

    ``ChatAgent`` makes its own client over aiohttp when ``openai[aiohttp]`` is
    installed, else over the SDK's default; every agent test runs on both, so a
    fault (a dropped body, a stall, a bad chunk) means the same on either.
    (``verify=False``: no 0.1 s SSL setup.)
    """
    http_client = (
        openai.DefaultAioHttpClient()
        if request.param == "aiohttp"
        else openai.DefaultAsyncHttpxClient(verify=False)
    )
    async with openai.AsyncOpenAI(
        base_url=replay_server.base_url, api_key=MODEL_KEY, http_client=http_client
    ) as client:
        yield client
