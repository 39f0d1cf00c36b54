"""Fixtures of the browser tests: a real ``agentcast serve`` and headless Chromium.

The server is one ``python -m agentcast serve`` subprocess on 127.0.0.1 for the
whole session (tests use threads of their own, so they do not interfere); the
browser is the system's ``/usr/bin/chromium`` driven by Playwright, launched
once, with a fresh context (its own profile storage) per test. Without
Chromium or Playwright the tests skip — or fail when
``AGENTCAST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES, skip_or_fail

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = Path(os.environ.get("AGENTCAST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
#: Where screenshots go (git-ignored).
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output"
#: Playwright's default wait, in milliseconds: generous, since every wait is for a condition.
WAIT_MS = 15_000
STARTUP_S = 30.0


@dataclass(frozen=True)
class Server:
    """A running ``agentcast serve``."""

    url: str
    data_dir: Path
    token: str
    other_token: str
    log: Path

    def api(self, method: str, path: str, token: str | None = None) -> Any:
        """Call the HTTP API as the dev user (or ``token``); the decoded JSON body."""
        response = httpx.request(
            method,
            self.url + path,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def events(self, thread_id: str) -> list[dict[str, Any]]:
        """Every stored event of a thread, in seq order."""
        events: list[dict[str, Any]] = []
        while True:
            body = self.api(
                "GET",
                f"/v1/threads/{thread_id}/events?after_seq={len(events)}&limit=1000",
            )
            events.extend(body["events"])
            if len(body["events"]) < 1000:
                return events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, startup_s: float = STARTUP_S
) -> None:
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"agentcast serve exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"agentcast serve did not answer /healthz within {startup_s}s:\n{log.read_text()}")


@contextlib.contextmanager
def serve(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, startup_s: float = STARTUP_S
) -> Iterator[Server]:
    """Run ``python -m agentcast serve --dev ARGS`` until the block ends (then SIGTERM).

    ``env`` is added to this process's environment: the ``--llm openai`` pages
    point the server's model client at a replay server with ``OPENAI_BASE_URL``.
    """
    log = data_dir / "serve.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", "agentcast", "serve", "--dev", "--port", str(port), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    try:
        _wait_healthy(url, process, log, startup_s)
        token = (data_dir / "dev-token").read_text().strip()
        other = subprocess.run(
            [*command[:3], "token", "--user", "other", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=30,
            check=True,
        )
        yield Server(url, data_dir, token, other.stdout.strip().splitlines()[-1], log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``python -m agentcast serve`` for the session, stopped with SIGTERM afterwards."""
    with serve(tmp_path_factory.mktemp("web-data")) as running:
        yield running


def require_playwright() -> None:
    """Skip the importing module without Playwright (fail it when services are required)."""
    if importlib.util.find_spec("playwright") is None:
        reason = "playwright is not installed: pip install playwright==1.64.1"
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} (AGENTCAST_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    """Playwright's driver, or a skip (a failure in CI) when it or Chromium is missing."""
    if not CHROMIUM.exists():
        skip_or_fail(
            f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
            "(Playwright cannot download a browser here)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install playwright==1.64.1")
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    """Headless system Chromium; Playwright gives it a fresh temporary profile."""
    launched = playwright_instance.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (storage, cookies) for one test, at laptop size."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page_errors() -> Iterator[list[str]]:
    """Uncaught page errors seen by :func:`open_page`; there must be none by the end."""
    errors: list[str] = []
    yield errors
    assert errors == [], f"uncaught errors in the page: {errors}"


def open_page(
    context: BrowserContext,
    server: Server,
    *,
    token: str | None = None,
    thread_id: str | None = None,
    errors: list[str] | None = None,
) -> Page:
    """Open the web page signed in with ``token`` (the dev token by default) and wait for Live."""
    page = context.new_page()
    if errors is not None:
        page.on("pageerror", lambda error: errors.append(str(error)))
    query = f"?thread={thread_id}" if thread_id else ""
    page.goto(f"{server.url}/{query}#token={token or server.token}")
    page.locator("#conn[data-state=open]").wait_for()
    return page
