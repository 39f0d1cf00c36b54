"""A conversation in the web page with ``agentcast serve --llm``: two turns in one thread.

Against the replay server (``--llm openai``) the ``assistant`` lets the model
choose the demo's tools: the page shows the tool cards and both answers in
order, and the model's second request carries the first turn. Against the
local model (``--llm local``) the demo, which routes its tools in code, writes
two answers with it. Every wait is for a condition in the page, bounded by the
scaled test time (tests/utils.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agentcast.llm.writers import ASSISTANT_PROMPT
from tests.e2e.test_serve_llm import (
    FIRST_ANSWER,
    FOLLOW_UP,
    QUESTION,
    SECOND_ANSWER,
    TOOL_ARGUMENTS,
    assistant_first_turn,
    first_turn_messages,
    requires_local_model,
)
from tests.llm.replay import ReplayServer, reply, serve_in_thread
from tests.utils import seconds

from .conftest import Server, open_page, require_playwright, serve

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

require_playwright()  # before importing it below

from playwright.sync_api import expect  # noqa: E402 (only once it is known to be there)

from .test_page import send, shown, stored, thread_of  # noqa: E402

#: A run against the replay server, page included.
RUN_MS = seconds(15.0) * 1000
#: A run whose answer the local model writes on a shared 2-core machine.
LOCAL_RUN_MS = seconds(60.0) * 1000


@pytest.fixture(scope="module")
def model() -> Iterator[ReplayServer]:
    """The scripted OpenAI-compatible server the ``--llm openai`` page's agents talk to."""
    with serve_in_thread() as server:
        yield server
    assert server.unscripted == [], "a model request found no scenario queued"


@pytest.fixture(scope="module")
def openai_server(
    tmp_path_factory: pytest.TempPathFactory, model: ReplayServer
) -> Iterator[Server]:
    """``agentcast serve --llm openai`` with its model at the replay server."""
    env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "sk-local-test"}
    with serve(
        tmp_path_factory.mktemp("web-llm-openai"), "--llm", "openai", env=env,
        startup_s=seconds(30.0),
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``agentcast serve --llm local``: the bundled model writes the demo's answers."""
    data_dir: Path = tmp_path_factory.mktemp("web-llm-local")
    with serve(data_dir, "--llm", "local", startup_s=seconds(30.0)) as running:
        yield running


def finished_run(page: Page, index: int, timeout: float = RUN_MS) -> Locator:
    """The ``index``-th top-level run on the page, once it has completed."""
    run = page.locator("#timeline > section.run").nth(index)
    expect(run).to_have_attribute("data-status", "completed", timeout=timeout)
    return run


def types_in_order(run: Locator) -> list[str]:
    """The event type of each of the run's timeline elements, in page order."""
    return [
        str(t)
        for t in run.evaluate("r => [...r.querySelectorAll('[data-seq]')].map(e => e.dataset.type)")
    ]


def test_assistant_conversation_with_tools_in_the_page(
    context: BrowserContext, openai_server: Server, model: ReplayServer, page_errors: list[str]
) -> None:
    model.queue(*assistant_first_turn(), reply(SECOND_ANSWER))
    page = open_page(context, openai_server, errors=page_errors)

    send(page, QUESTION, "assistant")
    first = finished_run(page, 0)
    thread_id = thread_of(page)
    expect(first.locator(".msg-user")).to_have_text(QUESTION)
    cards = first.locator(".step.tool")
    expect(cards.locator(".tool-name")).to_have_text([n for n, _ in TOOL_ARGUMENTS.values()])
    for i in range(2):
        expect(cards.nth(i)).to_have_attribute("data-status", "success")
        expect(cards.nth(i).locator(".tool-result summary")).to_contain_text("Result")
    expect(cards.first.locator(".tool-params dd")).to_have_text(["30"])
    expect(first.locator(".step.final .answer")).to_have_text(FIRST_ANSWER)

    send(page, FOLLOW_UP, "assistant")  # the thread on screen goes on
    second = finished_run(page, 1)
    assert thread_of(page) == thread_id
    expect(second.locator(".msg-user")).to_have_text(FOLLOW_UP)
    expect(second.locator(".step.tool")).to_have_count(0)
    expect(second.locator(".step.final .answer")).to_have_text(SECOND_ANSWER)

    # In order: the calls start, finish, then the answer; each event once.
    # On the page each card holds its call and its result; the answer comes after.
    assert types_in_order(first) == [
        "agent_started",
        *["tool_executing", "tool_completed"] * 2,
        "text_delta",
        "agent_completed",
    ]
    assert shown(page) == stored(openai_server, thread_id)
    # The model was asked again with turn 1 exactly, then the new question.
    assert model.completions[-1].body["messages"] == [
        {"role": "system", "content": ASSISTANT_PROMPT},
        *first_turn_messages(QUESTION),
        {"role": "user", "content": FOLLOW_UP},
    ]


@requires_local_model
def test_demo_conversation_written_by_the_local_model_in_the_page(
    context: BrowserContext, local_server: Server, page_errors: list[str]
) -> None:
    page = open_page(context, local_server, errors=page_errors)
    for index, message in enumerate((QUESTION, FOLLOW_UP)):
        send(page, message, "demo")
        run = finished_run(page, index, timeout=LOCAL_RUN_MS)
        expect(run.locator(".msg-user")).to_have_text(message)
        expect(run.locator(".step.tool").first).to_be_visible()  # routed in code
    thread_id = thread_of(page)
    shown_runs = page.locator("#timeline > section.run")
    expect(shown_runs).to_have_count(2)

    events = local_server.events(thread_id)
    runs = list(dict.fromkeys(e["run_id"] for e in events if e["parent_run_id"] is None))
    assert len(runs) == 2
    for index, run_id in enumerate(runs):
        own = [e for e in events if e["run_id"] == run_id]
        assert own[-1]["type"] == "agent_completed"
        text = "".join(e["data"]["delta"] for e in own if e["type"] == "text_delta")
        assert text.strip()
        assert text == own[-1]["data"]["final_response"]
        expect(shown_runs.nth(index)).to_have_attribute("data-run-id", run_id)
        expect(shown_runs.nth(index).locator(".step.final .answer")).not_to_be_empty()
    assert shown(page) == stored(local_server, thread_id)
