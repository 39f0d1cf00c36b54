"""Token lifetime: ``exp`` is required and bounded by ``max_token_lifetime_s``, on every transport.

HTTP, the SSE stream and the WebSocket handshake share one verification
(``Authenticator.verify_token``); each refusal is checked over HTTP and over a
real WebSocket handshake, and a good token of another user keeps working.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from typer.testing import CliRunner

from agentcast.cli import app as cli_app
from agentcast.gateway.auth import Authenticator
from agentcast.gateway.settings import GatewaySettings
from tests.gateway.ws_support import LiveServer, ServerFactory

from .conftest import SECRET, AppFactory, gateway_of

MAX_S = 3600.0


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "mallory", **claims}, SECRET, algorithm="HS256")


def refused_tokens() -> dict[str, tuple[str, str]]:
    """Each bad token and a fragment of the reason it is refused with."""
    now = int(time.time())
    return {
        "no_exp": (token(iat=now), "'exp'"),
        "no_exp_no_iat": (token(), "'exp'"),
        "lifetime_from_iat": (token(iat=now, exp=now + int(MAX_S) + 60), "max_token_lifetime_s"),
        "lifetime_from_now": (token(exp=now + int(MAX_S) + 60), "max_token_lifetime_s"),
        "old_iat_long_exp": (token(iat=now - 60, exp=now + int(MAX_S)), "max_token_lifetime_s"),
    }


@pytest.fixture
async def app(app_factory: AppFactory) -> Any:
    return await app_factory(max_token_lifetime_s=MAX_S, dev_token_ttl_s=MAX_S)


@pytest.fixture
async def live(make_ws_server: ServerFactory) -> LiveServer:
    return await make_ws_server(max_token_lifetime_s=MAX_S, dev_token_ttl_s=MAX_S)


async def test_refused_over_http_and_sse(app: Any) -> None:
    gateway = gateway_of(app)
    transport = httpx.ASGITransport(app)
    good = gateway.auth.mint_token("alice")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for name, (bad, reason) in refused_tokens().items():
            for path in ("/v1/agents", "/v1/threads/th_x/stream"):
                r = await c.get(path, headers={"authorization": f"Bearer {bad}"})
                assert r.status_code == 401, (name, path, r.text)
                body = r.json()
                assert body["code"] == "unauthorized", name
                assert reason in body["detail"], (name, body)
                assert r.headers["www-authenticate"].startswith('Bearer realm="agentcast"')
            # Another user's good token, at the same moment, is accepted.
            r = await c.get("/v1/agents", headers={"authorization": f"Bearer {good}"})
            assert r.status_code == 200, name
    assert gateway.metrics.refusals("max_token_lifetime_s") == 2 * 3


async def test_refused_at_the_websocket_handshake(live: LiveServer) -> None:
    for name, (bad, reason) in refused_tokens().items():
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(
                live.url, additional_headers={"Authorization": f"Bearer {bad}"}
            )
        assert info.value.response.status_code == 401, name
        assert reason in info.value.response.body.decode(), name
        # The same token offered as a browser subprotocol is refused the same way.
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(
                live.url,
                subprotocols=["agentcast.v1", f"bearer.{bad}"],  # type: ignore[list-item]
            )
        assert info.value.response.status_code == 401, name
    ws = await live.connect("alice")  # a minted token is within the bound
    assert ws.state is websockets.protocol.State.OPEN
    assert live.gateway.metrics.refusals("max_token_lifetime_s") == 2 * 3


async def test_a_lifetime_of_exactly_the_maximum_is_accepted(tmp_path: Path) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path, jwt_secret=SECRET, max_token_lifetime_s=MAX_S, dev_token_ttl_s=60
    )
    auth = Authenticator(settings)
    now = int(time.time())
    principal = await auth.verify_token(token(iat=now, exp=now + int(MAX_S)))
    assert principal.expires_at == now + MAX_S
    minted = await auth.verify_token(auth.mint_token("alice", ttl_s=MAX_S))
    assert minted.expires_at is not None
    assert minted.expires_at <= time.time() + MAX_S
    claims = jwt.decode(auth.mint_token("alice", ttl_s=MAX_S), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] <= MAX_S


def test_mint_token_refuses_a_lifetime_beyond_the_maximum(tmp_path: Path) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path, jwt_secret=SECRET, max_token_lifetime_s=MAX_S, dev_token_ttl_s=60
    )
    auth = Authenticator(settings)
    with pytest.raises(ValueError, match="max_token_lifetime_s"):
        auth.mint_token("alice", ttl_s=MAX_S + 1)
    with pytest.raises(ValueError, match="> 0"):
        auth.mint_token("alice", ttl_s=0)


def test_cli_token_ttl_beyond_the_maximum_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTCAST_JWT_SECRET", SECRET)
    monkeypatch.setenv("AGENTCAST_MAX_TOKEN_LIFETIME_S", str(MAX_S))
    monkeypatch.setenv("AGENTCAST_DEV_TOKEN_TTL_S", "60")
    runner = CliRunner()
    args = ["token", "--user", "alice", "--data-dir", str(tmp_path)]
    result = runner.invoke(cli_app, [*args, "--ttl", str(MAX_S * 10)])
    assert result.exit_code == 2, result.output
    assert "max_token_lifetime_s" in result.output
    result = runner.invoke(cli_app, [*args, "--ttl", "120"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] <= 121
