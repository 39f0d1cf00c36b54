"""What agents hold beyond a run is given back when the engine shuts down."""

from __future__ import annotations

import openai
import pytest

from agentcast.agents import AgentRegistry, RunContext
from agentcast.config import EngineSettings
from agentcast.engine import Engine
from agentcast.llm import ChatAgent
from agentcast.settings import LlmSection


class Holder:
    """An agent holding something it must close."""

    name = "holder"
    description = "holds a connection"

    def __init__(self, closed: list[str]) -> None:
        self.closed = closed

    async def run(self, ctx: RunContext) -> str:
        return "ok"

    async def aclose(self) -> None:
        self.closed.append("holder")


async def test_closers_and_agents_aclose_run_once_and_a_failure_stops_none() -> None:
    closed: list[str] = []
    registry = AgentRegistry()
    holder = Holder(closed)
    registry.register(holder)

    async def broken() -> None:
        closed.append("broken")
        raise RuntimeError("cannot close")

    async def writer() -> None:
        closed.append("writer")

    registry.on_close(broken)
    registry.on_close(writer)
    registry.on_close(holder.aclose)  # the same as the agent's own: closed once
    await registry.aclose()
    assert closed == ["broken", "writer", "holder"]
    closed.clear()
    await registry.aclose()  # closers run once; agents are asked again (idempotent closes)
    assert closed == ["holder"]


async def test_the_engine_closes_its_agents_at_shutdown(tmp_path: object) -> None:
    closed: list[str] = []
    registry = AgentRegistry()
    registry.register(Holder(closed))
    engine = Engine(EngineSettings(log_backend="memory", shutdown_grace_s=0), registry)
    await engine.start()
    assert closed == []
    await engine.shutdown()
    assert closed == ["holder"]


async def test_a_chat_agent_closes_the_client_it_made_and_never_a_given_one() -> None:
    settings = LlmSection(llm_model="m", llm_base_url="http://127.0.0.1:9/v1")
    own = ChatAgent("own", settings=settings)
    client = own._get_client()
    await own.aclose()
    assert client.is_closed()
    given = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    try:
        agent = ChatAgent("given", client=given, settings=settings)
        await agent.aclose()
        assert not given.is_closed()
    finally:
        await given.close()


@pytest.mark.parametrize("installed", [True, False])
async def test_the_default_client_uses_aiohttp_when_installed(
    installed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from agentcast.llm import chat_agent

    real = importlib.util.find_spec
    monkeypatch.setattr(
        chat_agent.importlib.util,
        "find_spec",
        lambda name, *a: real(name, *a) if installed or name != "aiohttp" else None,
    )
    options = chat_agent._http_client(openai)
    assert ("http_client" in options) is installed
    if installed:
        await options["http_client"].aclose()
