"""The web page of an agentcast mounted under a path prefix in a FastAPI host.

The host serves ``/`` itself and mounts agentcast at ``/chat`` (its lifespan
calls ``agentcast_lifespan``), run by uvicorn in a thread of this process. The
page opened at ``/chat`` must load its assets from ``/chat/static/…``, call
``/chat/v1/…`` and connect to ``/chat/v1/ws`` — nothing outside the prefix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI

from agentcast.gateway.app import agentcast_lifespan, create_app, find_gateway
from agentcast.gateway.settings import GatewaySettings

from .conftest import STARTUP_S, WAIT_MS, _free_port, require_playwright

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Request

require_playwright()  # before importing it below

from playwright.sync_api import expect  # noqa: E402 (only once it is known to be there)

expect.set_options(timeout=WAIT_MS)

PREFIX = "/chat"
SECRET = "web-mount-secret-" + "0123456789abcdef" * 4


@dataclass(frozen=True)
class Host:
    """A running FastAPI host with agentcast mounted at :data:`PREFIX`."""

    url: str
    token: str


def host_app(data_dir: Path) -> FastAPI:
    """A FastAPI app that answers ``/`` itself and mounts agentcast at :data:`PREFIX`."""
    sub = create_app(
        GatewaySettings(data_dir=data_dir, jwt_secret=SECRET, log_backend="memory"),
        lifespan=False,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with agentcast_lifespan(sub):
            yield

    host = FastAPI(lifespan=lifespan)

    @host.get("/")
    async def home() -> dict[str, str]:
        return {"host": "yes"}

    host.mount(PREFIX, sub)
    return host


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The host app served by uvicorn on a free port, in a thread; stopped afterwards."""
    app = host_app(tmp_path_factory.mktemp("web-mount"))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-mounted", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the host app did not start")
            time.sleep(0.02)
        token = find_gateway(app).auth.mint_token("alice")
        yield Host(f"http://127.0.0.1:{port}", token)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_page_works_mounted_under_a_prefix(
    context: BrowserContext, mounted: Host, page_errors: list[str]
) -> None:
    requested: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.startswith(("http:", "https:", "ws:", "wss:")):
            requested.append(request.url)

    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.on("request", on_request)
    page.on("websocket", lambda ws: requested.append(ws.url))
    # No trailing slash: the host redirects /chat to /chat/ (keeping the fragment).
    page.goto(f"{mounted.url}{PREFIX}#token={mounted.token}")
    page.locator("#conn[data-state=open]").wait_for()
    assert urlsplit(page.url).path == f"{PREFIX}/"
    expect(page.locator("#user-id")).to_have_text("alice")

    page.select_option("#agent", "echo")
    page.fill("#message", "hello from under /chat")
    page.press("#message", "Enter")
    run = page.locator("#timeline > section.run").last
    expect(run).to_have_attribute("data-status", "completed")
    expect(run.locator(".msg-user")).to_have_text("hello from under /chat")
    expect(run.locator(".step.final .answer")).to_contain_text("hello from under /chat")

    # The thread opened afresh loads its history from /chat/v1/threads/….
    page.wait_for_function("() => window.__agentcast.threadId !== null")
    thread_id = str(page.evaluate("window.__agentcast.threadId"))
    again = context.new_page()
    again.on("pageerror", lambda error: page_errors.append(str(error)))
    again.on("request", on_request)
    again.goto(f"{mounted.url}{PREFIX}/?thread={thread_id}")
    expect(again.locator("#timeline > section.run").last).to_have_attribute(
        "data-status", "completed"
    )

    paths = [urlsplit(url).path for url in requested]
    assert f"{PREFIX}/static/app.js" in paths
    assert f"{PREFIX}/static/style.css" in paths
    assert f"{PREFIX}/v1/agents" in paths
    assert f"{PREFIX}/v1/ws" in paths
    assert f"{PREFIX}/v1/threads/{thread_id}/events" in paths
    outside = [
        url
        for url, path in zip(requested, paths, strict=True)
        if path != PREFIX and not path.startswith(f"{PREFIX}/")
    ]
    assert outside == []
