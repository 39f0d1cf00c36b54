"""agentcast inside another app: the host's lifespan starts and stops it.

docs/architecture.md, invariant 9.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

import agentcast
from agentcast.errors import Unavailable
from agentcast.gateway.app import agentcast_lifespan, create_app, find_gateway
from agentcast.gateway.context import Gateway
from agentcast.gateway.settings import GatewaySettings

from .conftest import SECRET, gateway_of, make_app, start_run, wait_terminal


def host_with(sub: Starlette) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentcast_lifespan(sub):
            yield

    host = FastAPI(lifespan=lifespan)

    @host.get("/hello")
    async def hello() -> dict[str, str]:
        return {"host": "yes"}

    host.mount("/agentcast", sub)
    return host


async def test_mounted_in_fastapi_runs_echo_and_demo(tmp_path: Path) -> None:
    sub = make_app(tmp_path)
    gateway = gateway_of(sub)
    host = host_with(sub)
    token = gateway.auth.mint_token("alice")
    async with host.router.lifespan_context(host):
        assert gateway.started
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(host),
            base_url="http://host/agentcast",
            headers={"authorization": f"Bearer {token}"},
        ) as client:
            assert (await client.get("http://host/hello")).json() == {"host": "yes"}
            assert (await client.get("/readyz")).status_code == 200
            for agent in ("echo", "demo"):
                accepted = await start_run(client, agent=agent, message="how much on GPUs?")
                events = await wait_terminal(client, accepted["thread_id"])
                assert events[0]["type"] == "agent_started"
                assert events[-1]["type"] == "agent_completed"
                run = (await client.get(f"/v1/runs/{accepted['run_id']}")).json()
                assert run["status"] == "completed"
            r = await client.get("/v1/runs/run_x")
            assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert not gateway.started
    assert gateway.engine.bridge.state == "closed"


async def test_lifespan_finds_the_gateway_through_the_host(tmp_path: Path) -> None:
    sub = make_app(tmp_path)
    host = FastAPI(lifespan=agentcast_lifespan)
    host.mount("/agentcast", sub)
    assert find_gateway(host) is gateway_of(sub)
    async with host.router.lifespan_context(host) as state:
        assert state == {"agentcast": gateway_of(sub)}
        assert gateway_of(sub).started
    assert not gateway_of(sub).started


async def test_get_engine_is_the_engine_that_is_serving(tmp_path: Path) -> None:
    """Inside the lifespan it is the app's own engine; outside, nothing builds a second one."""
    with pytest.raises(Unavailable, match="no agentcast engine is serving"):
        agentcast.get_engine()
    sub = make_app(tmp_path)
    host = FastAPI(lifespan=agentcast_lifespan)
    host.mount("/agentcast", sub)
    async with host.router.lifespan_context(host):
        assert agentcast.get_engine() is gateway_of(sub).engine
        assert agentcast.get_bridge() is gateway_of(sub).engine.bridge
    with pytest.raises(Unavailable):
        agentcast.get_bridge()


async def test_lifespan_accepts_a_gateway_and_refuses_others(tmp_path: Path) -> None:
    gateway = gateway_of(make_app(tmp_path))
    async with agentcast_lifespan(gateway):
        assert gateway.started
    with pytest.raises(TypeError):
        find_gateway(FastAPI())
    with pytest.raises(TypeError):
        async with agentcast_lifespan(object()):
            pass


async def test_own_lifespan_and_no_lifespan(tmp_path: Path) -> None:
    app = make_app(tmp_path / "a")
    async with app.router.lifespan_context(app):
        assert gateway_of(app).started
    assert not gateway_of(app).started
    settings = GatewaySettings(log_backend="memory", data_dir=tmp_path / "b", jwt_secret=SECRET)
    bare = create_app(settings, lifespan=False)
    async with bare.router.lifespan_context(bare):
        assert not gateway_of(bare).started


async def test_create_app_builds_its_engine_and_loads_agents(tmp_path: Path) -> None:
    settings = GatewaySettings(
        log_backend="memory",
        data_dir=tmp_path,
        agents=[
            "agentcast.agents.builtin:registry",
            "tests.gateway.sample_agents:shout",
            "tests.gateway.sample_agents:registry",
        ],
    )
    with pytest.raises(ValueError, match="no key to check tokens with"):
        agentcast.create_app(settings)  # production is not the demo
    assert not (tmp_path / "dev-secret").exists()
    app = agentcast.create_app(settings, dev=True)
    gateway: Gateway = app.state.agentcast
    assert {"demo", "echo", "countdown", "shout", "whisper"} <= set(gateway.engine.registry)
    assert (tmp_path / "dev-secret").is_file()  # no jwt_secret, dev: the development one
    async with agentcast_lifespan(app):
        token = gateway.auth.mint_token("zoe")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://t",
            headers={"authorization": f"Bearer {token}"},
        ) as client:
            accepted = await start_run(client, agent="shout", message="hey")
            await wait_terminal(client, accepted["thread_id"])
            run = (await client.get(f"/v1/runs/{accepted['run_id']}")).json()
            assert run["output"] == "HEY"


def test_loading_the_same_agents_twice_is_harmless(tmp_path: Path) -> None:
    from agentcast.agents import builtin_registry
    from agentcast.gateway.app import load_agents

    specs = ["tests.gateway.sample_agents:shout"]
    settings = GatewaySettings(
        log_backend="memory", data_dir=tmp_path, agents=specs, jwt_secret=SECRET
    )
    app = create_app(settings, load_agents(specs, builtin_registry()))
    assert "shout" in gateway_of(app).engine.registry


def test_named_agents_replace_the_built_ins_and_the_default_agent_must_be_served(
    tmp_path: Path,
) -> None:
    only_mine = GatewaySettings(
        log_backend="memory",
        data_dir=tmp_path,
        agents=["tests.gateway.sample_agents:registry"],
        jwt_secret=SECRET,
    )
    with pytest.raises(ValueError, match="the default agent 'demo' is not served"):
        create_app(only_mine)
    app = create_app(only_mine.model_copy(update={"default_agent": "whisper"}))
    assert "demo" not in gateway_of(app).engine.registry
    assert "whisper" in gateway_of(app).engine.registry


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon", "must look like"),
        ("tests.gateway.missing_module:x", "cannot load"),
        ("tests.gateway.sample_agents:nope", "cannot load"),
        ("tests.gateway.sample_agents:not_an_agent", "neither an Agent"),
    ],
)
def test_bad_agent_specs(tmp_path: Path, spec: str, match: str) -> None:
    settings = GatewaySettings(
        log_backend="memory", data_dir=tmp_path, agents=[spec], jwt_secret=SECRET
    )
    with pytest.raises(ValueError, match=match):
        create_app(settings)
