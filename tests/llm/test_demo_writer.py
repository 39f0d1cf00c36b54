"""The demo with a model writing its answers (``agentcast serve --llm``).

The routing and the tools stay in code; the model gets the question and the
report and writes the answer, streamed like any model answer.
"""

from __future__ import annotations

import openai

from agentcast.agents import builtin_registry
from agentcast.agents.builtin.demo import WRITER_PROMPT
from agentcast.llm import ChatAgent
from agentcast.settings import LlmSection
from tests.conftest import EngineFactory
from tests.llm.replay import ReplayServer, reply
from tests.runner.helpers import thread_events, wait_run


async def test_the_model_writes_the_demos_answer_from_its_report(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    answer = "You spent a lot; cache more prompts."
    replay_server.queue(reply(answer, reasoning_text="Summing up the report."))
    writer = ChatAgent("writer", client=model_client, settings=LlmSection(llm_model="small"))
    engine = await make_engine(builtin_registry(demo_pace=0, writer=writer))
    question = "How much did we spend last month and how can we save?"
    ticket = await engine.runner.start_run("alice", "demo", question)
    record = await wait_run(engine, "alice", ticket.run_id)
    assert record.output == answer
    events = await thread_events(engine, ticket.thread_id)
    demo = [e for e in events if e.run_id == ticket.run_id]
    assert "".join(e.data["delta"] for e in demo if e.type == "text_delta") == answer
    assert "".join(e.data["delta"] for e in demo if e.type == "thinking_delta") == (
        "Summing up the report."
    )
    # The sub-agents and their tools ran in code, as without a model.
    assert {e.data["tool_name"] for e in events if e.type == "tool_executing"} >= {
        "usage_metrics",
        "draft_report",
    }
    (request,) = replay_server.completions
    system, user = request.body["messages"]
    assert system == {"role": "system", "content": WRITER_PROMPT}
    assert user["content"].startswith(f"Question: {question}\n\nReport:\n")
    assert "Total spend" in user["content"]  # the numbers come from the report
    assert "tools" not in request.body
