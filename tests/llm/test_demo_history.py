"""The demo with a model carries a conversation: its writer sees the thread's earlier turns.

``agentcast serve --llm local`` cannot offer the local model tools, so there the
tool-using agent is the demo, which routes its tools in code and has the model
write; a follow-up question in the same thread must reach the model with the
earlier question and answer before it. The replay server stands in for the model
(the local model's own run is tests/e2e/test_serve_llm.py).
"""

from __future__ import annotations

import openai

from agentcast.agents import builtin_registry
from agentcast.agents.builtin.demo import WRITER_PROMPT
from agentcast.llm import ChatAgent
from agentcast.settings import LlmSection
from tests.conftest import EngineFactory
from tests.llm.replay import ReplayServer, reply
from tests.runner.helpers import wait_run

QUESTION = "How much did we spend last month?"
FOLLOW_UP = "And over the last week?"
FIRST_ANSWER = "About the report's total; spend is up."
SECOND_ANSWER = "Less than last month, as the new report shows."


async def test_the_demos_writer_gets_the_earlier_turns_of_the_thread(
    make_engine: EngineFactory, replay_server: ReplayServer, model_client: openai.AsyncOpenAI
) -> None:
    replay_server.queue(reply(FIRST_ANSWER), reply(SECOND_ANSWER))
    writer = ChatAgent("writer", client=model_client, settings=LlmSection(llm_model="small"))
    engine = await make_engine(builtin_registry(demo_pace=0, writer=writer))
    first = await engine.runner.start_run("alice", "demo", QUESTION)
    assert (await wait_run(engine, "alice", first.run_id)).output == FIRST_ANSWER
    second = await engine.runner.start_run("alice", "demo", FOLLOW_UP, thread_id=first.thread_id)
    assert (await wait_run(engine, "alice", second.run_id)).output == SECOND_ANSWER

    before, after = replay_server.completions
    system = {"role": "system", "content": WRITER_PROMPT}
    (user,) = before.body["messages"][1:]
    assert before.body["messages"] == [system, user]
    assert user["content"].startswith(f"Question: {QUESTION}\n\nReport:\n")
    # The earlier turn is the user's question and the answer the model wrote (the
    # report it was given stays in that run), then the new question and its report.
    *history, new = after.body["messages"][1:]
    assert after.body["messages"][0] == system
    assert history == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": FIRST_ANSWER},
    ]
    assert new["role"] == "user"
    assert new["content"].startswith(f"Question: {FOLLOW_UP}\n\nReport:\n")
    assert "last 7 days" in new["content"]
