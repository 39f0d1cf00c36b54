"""The web page in a real browser against a real server.

Every check waits for a condition in the page (Playwright's auto-waiting
``expect`` or ``wait_for_function``), never for a fixed time. Exactly-once is
checked by comparing the ``data-seq`` of every timeline element with the
thread's stored events (``GET /v1/threads/{id}/events``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from .conftest import OUTPUT_DIR, WAIT_MS, Server, open_page, require_playwright

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

require_playwright()  # before importing it below

from playwright.sync_api import expect  # noqa: E402 (only once it is known to be there)

expect.set_options(timeout=WAIT_MS)

QUESTION = "How much did we spend last month and how can we save?"

Shown = list[tuple[int, str, str]]


# Helpers ----------------------------------------------------------------------------------


def send(page: Page, message: str, agent: str) -> None:
    """Pick ``agent``, type ``message`` and press Enter (the keyboard path)."""
    page.select_option("#agent", agent)
    page.fill("#message", message)
    page.press("#message", "Enter")


def thread_of(page: Page) -> str:
    """The id of the thread on screen, once the server has created it."""
    page.wait_for_function("() => window.__agentcast.threadId !== null")
    return str(page.evaluate("window.__agentcast.threadId"))


def last_run(page: Page) -> Locator:
    """The newest top-level run on the page."""
    return page.locator("#timeline > section.run").last


def shown(page: Page) -> Shown:
    """``(seq, type, run_id)`` of every timeline element, sorted by seq."""
    items: list[list[Any]] = page.eval_on_selector_all(
        "#timeline [data-seq]",
        "els => els.map(e => [Number(e.dataset.seq), e.dataset.type, e.dataset.runId])",
    )
    return sorted((int(seq), str(kind), str(run)) for seq, kind, run in items)


def stored(server: Server, thread_id: str) -> Shown:
    """``(seq, type, run_id)`` of every event the server stored for the thread."""
    return [(e["seq"], e["type"], e["run_id"]) for e in server.events(thread_id)]


def wait_for_steps(page: Page, count: int) -> None:
    """Wait until the page shows at least ``count`` thinking steps."""
    page.wait_for_function(
        "n => document.querySelectorAll('#timeline .step.thinking').length >= n", arg=count
    )


def wait_for_states(page: Page, since: int, *states: str) -> None:
    """Wait until the connection went through ``states`` in order, after the first ``since``."""
    page.wait_for_function(
        """([since, wanted]) => {
            const seen = window.__agentcast.states.slice(since);
            let i = 0;
            for (const state of seen) if (state === wanted[i]) i += 1;
            return i === wanted.length;
        }""",
        arg=[since, list(states)],
    )


def state_count(page: Page) -> int:
    """How many connection states the page has gone through."""
    return int(page.evaluate("window.__agentcast.states.length"))


def screenshot_whole_page(page: Page, name: str) -> None:
    """Save the whole page under ``test-output/``; it must not scroll sideways."""
    width = page.viewport_size["width"] if page.viewport_size else 1280
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways at {width}px"
    # Grow the viewport to the page, so sticky bars sit where a reader expects them.
    height = int(page.evaluate("document.documentElement.scrollHeight"))
    page.set_viewport_size({"width": width, "height": height})
    page.evaluate("window.scrollTo(0, 0)")
    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT_DIR / name)


# Tests ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_run_shows_every_step_in_order(
    context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    page = open_page(context, server, errors=page_errors)
    send(page, QUESTION, "demo")
    run = last_run(page)
    expect(run).to_have_attribute("data-status", "completed")
    thread_id = thread_of(page)

    # Started: the question, then the steps.
    expect(run.locator(".msg-user")).to_have_text(QUESTION)
    expect(run.locator(".status-chip").first).to_have_text("Completed")
    # Tool cards: name, parameters, result and duration; no spinner left.
    cards = page.locator(".step.tool")
    assert cards.count() >= 3
    card = cards.first
    expect(card).to_have_attribute("data-status", "success")
    expect(card.locator(".tool-name")).to_have_text(re.compile(r"^\w+$"))
    expect(card.locator(".tool-params dt").first).to_be_visible()
    expect(card.locator(".tool-result summary")).to_contain_text("Result")
    expect(card.locator(".tool-duration")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))
    expect(page.locator(".spinner")).to_have_count(0)
    # Sub-agents nested under the run; the answer, formatted.
    expect(run.locator(".step.subrun").first).to_be_visible()
    expect(run.locator(".step.final .answer")).to_contain_text("Total spend")

    items = shown(page)
    assert items == stored(server, thread_id)  # every step, exactly once
    run_id = run.get_attribute("data-run-id")
    order = [kind for _, kind, _ in items]
    top = [kind for _, kind, rid in items if rid == run_id]
    assert top[0] == "agent_started"
    assert top[-1] == "agent_completed"
    assert order.index("agent_started") < order.index("agent_thinking")
    assert order.index("agent_thinking") < order.index("tool_executing")
    assert order.index("tool_executing") < order.index("tool_completed")
    assert order.index("tool_completed") < len(order) - 1 == order.index("agent_completed", -1)

    # Screenshots of the finished run: this page at laptop width, then the
    # thread opened afresh (from its history) in a phone-sized tab.
    screenshot_whole_page(page, "demo-run.png")
    phone = context.new_page()
    phone.set_viewport_size({"width": 390, "height": 800})
    phone.goto(f"{server.url}/?thread={thread_id}")
    expect(last_run(phone)).to_have_attribute("data-status", "completed")
    assert shown(phone) == items
    screenshot_whole_page(phone, "demo-run-phone.png")


def test_stop_cancels_the_run_on_the_server(
    context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    page = open_page(context, server, errors=page_errors)
    send(page, "50 100", "countdown")
    run = last_run(page)
    wait_for_steps(page, 3)
    run.locator("button.stop").click()

    expect(run).to_have_attribute("data-status", "cancelled")
    expect(run.locator(".status-chip").first).to_have_text("Cancelled")
    expect(run.locator(".step.cancelled")).to_be_visible()
    expect(run.locator("button.stop")).to_have_count(0)
    expect(run.locator(".step.final")).to_have_count(0)
    assert run.locator(".step.thinking").count() < 50
    run_id = run.get_attribute("data-run-id")
    assert server.api("GET", f"/v1/runs/{run_id}")["status"] == "cancelled"
    assert shown(page) == stored(server, thread_of(page))


@pytest.mark.slow
def test_dropped_connection_and_reload_mid_run_lose_and_repeat_nothing(
    context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    page = open_page(context, server, errors=page_errors)
    send(page, "40 100", "countdown")  # 4 s
    thread_id = thread_of(page)
    wait_for_steps(page, 3)
    conn = page.locator("#conn")

    # The network goes away and comes back.
    since = state_count(page)
    context.set_offline(True)
    wait_for_states(page, since, "reconnecting")
    expect(conn).to_have_attribute("data-state", "reconnecting")
    expect(conn).to_have_text("Reconnecting…")
    context.set_offline(False)
    wait_for_states(page, since, "reconnecting", "resumed")
    expect(conn).to_have_attribute("data-state", "resumed")

    # The socket is closed under the page (the debug hook).
    since = state_count(page)
    page.evaluate("window.__agentcast.dropConnection()")
    wait_for_states(page, since, "reconnecting", "resumed")

    # A reload while the run is still going: history first, then live.
    assert last_run(page).get_attribute("data-status") == "running"
    page.reload()
    expect(conn).to_have_attribute("data-state", "open")
    run = last_run(page)
    expect(run).to_have_attribute("data-status", "completed")

    items = shown(page)
    assert items == stored(server, thread_id)
    assert [kind for _, kind, _ in items].count("agent_thinking") == 40
    assert len({seq for seq, _, _ in items}) == len(items)


@pytest.mark.slow
def test_two_tabs_show_the_same_run_and_another_user_sees_nothing(
    browser: Browser, context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    first = open_page(context, server, errors=page_errors)
    send(first, "30 50", "countdown")  # 1.5 s
    thread_id = thread_of(first)
    second = open_page(context, server, thread_id=thread_id, errors=page_errors)
    stranger_context = browser.new_context()
    try:
        stranger = open_page(
            stranger_context,
            server,
            token=server.other_token,
            thread_id=thread_id,
            errors=page_errors,
        )
        expect(stranger.locator("#thread-title")).to_have_text("Thread not found")
        expect(stranger.locator("#user-id")).to_have_text("other")

        for page in (first, second):
            expect(last_run(page)).to_have_attribute("data-status", "completed")
        expected = stored(server, thread_id)
        assert shown(first) == expected
        assert shown(second) == expected

        # The stranger's own run reaches neither of the first user's tabs.
        send(stranger, "hello from other", "echo")
        expect(last_run(stranger)).to_have_attribute("data-status", "completed")
        stranger_thread = thread_of(stranger)
        assert shown(stranger) == stored_as(server, server.other_token, stranger_thread)
        assert not {run for *_, run in shown(stranger)} & {run for *_, run in expected}
        assert shown(first) == expected
        assert shown(second) == expected
        expect(stranger.locator(f'.thread[data-thread-id="{thread_id}"]')).to_have_count(0)
        expect(first.locator(f'.thread[data-thread-id="{stranger_thread}"]')).to_have_count(0)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            server.api("GET", f"/v1/threads/{thread_id}/events", token=server.other_token)
        assert refused.value.response.status_code == 404
    finally:
        stranger_context.close()


def test_sign_in_with_a_pasted_token(
    context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(server.url)
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token-input", "not-a-token")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("refused")
    page.fill("#token-input", server.other_token)
    page.click("#signin button[type=submit]")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#user-id")).to_have_text("other")
    # The token is remembered: a new tab of the same browser is signed in.
    again = context.new_page()
    again.goto(server.url)
    expect(again.locator("#user-id")).to_have_text("other")


def stored_as(server: Server, token: str, thread_id: str) -> Shown:
    """Like :func:`stored`, as the user of ``token``."""
    body = server.api("GET", f"/v1/threads/{thread_id}/events?limit=1000", token=token)
    return [(e["seq"], e["type"], e["run_id"]) for e in body["events"]]


def test_model_output_never_loads_a_remote_image(
    context: BrowserContext, server: Server, page_errors: list[str]
) -> None:
    """``![…](url)`` is a link the user may open, never a fetch; the page's CSP agrees."""
    fetched: list[str] = []
    page = open_page(context, server, errors=page_errors)
    page.on("request", lambda request: fetched.append(request.url))
    shown = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const box = document.createElement("div");
            box.append(renderMarkdown(
                "Look ![chart](http://127.0.0.1:9/leak.png?q=secret) and [docs](https://example.org/)"
            ));
            document.body.append(box);
            return {
                images: box.querySelectorAll("img").length,
                links: [...box.querySelectorAll("a")].map((a) => [a.textContent, a.href]),
            };
        }"""
    )
    assert shown["images"] == 0
    assert shown["links"] == [
        ["image: chart", "http://127.0.0.1:9/leak.png?q=secret"],
        ["docs", "https://example.org/"],
    ]
    assert not [url for url in fetched if "leak.png" in url]
    csp = httpx.get(server.url).headers["content-security-policy"]
    assert "img-src 'self' data:" in csp
