"""``agentcast serve --llm``: the demo's answers written by a model, and the assistant, end to end.

A real server process, the real CLI, and a model over a socket: the local
replay server for ``--llm openai`` (an OpenAI-compatible server, reached
through the SDK's own ``OPENAI_BASE_URL``), and the bundled SmolLM2 through
llama.cpp for ``--llm local``. The multi-turn tests continue a thread with
``agentcast run --thread`` and check what the model is sent the second time.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from agentcast.agents.builtin import spend_data
from agentcast.llm.writers import ASSISTANT_PROMPT, ASSISTANT_TOOLS
from tests.e2e.harness import Server, Servers, cli
from tests.llm.replay import reply, scenario, serve_in_thread, tool_calls, usage
from tests.utils import seconds

QUESTION = "How much did we spend last month?"
FOLLOW_UP = "And which of those models is the most expensive?"

#: The assistant's scripted first turn: two tool calls in one step, then the answer.
TOOL_ARGUMENTS = {
    "call_spend": ("usage_metrics", '{"days":30}'),
    "call_models": ("cost_breakdown", '{"by":"model","days":30}'),
}
FIRST_ANSWER = "Most of the last 30 days' spend went to claude-3-5-sonnet."
SECOND_ANSWER = "Yes: claude-3-5-sonnet, as said above."
#: The local model writes slowly on a shared machine: one run's bound.
LOCAL_RUN_TIMEOUT_S = seconds(120.0)


def _local_model_installed() -> bool:
    try:
        from agentcast.llm.local import locate_model

        locate_model()
        import llama_cpp  # noqa: F401
    except (ImportError, FileNotFoundError):
        return False
    return True


#: Skips a test of the local model unless it is installed, or required (CI: then it fails).
requires_local_model = pytest.mark.skipif(
    os.environ.get("AGENTCAST_REQUIRE_LOCAL_MODEL") != "1" and not _local_model_installed(),
    reason="the local model is not installed (make local-model)",
)


def thread_of(output: str) -> str:
    """The thread id ``agentcast run`` prints first."""
    match = re.search(r"thread (\S+) · run (\S+)", output)
    assert match, output
    return match[1]


def top_level_events(server: Server, thread_id: str) -> list[dict[str, Any]]:
    """The thread's stored events of its top-level runs (``agentcast replay --json``)."""
    args = ("--url", server.url, "--data-dir", str(server.data_dir))
    replay = cli("replay", thread_id, "--json", *args)
    assert replay.returncode == 0, replay.stderr
    events = [json.loads(line) for line in replay.stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["parent_run_id"] is None]


def assistant_first_turn() -> list[Any]:
    """The model's two answers of turn 1: parallel calls, arguments in pieces; then text."""
    calls = [(call_id, name, args) for call_id, (name, args) in TOOL_ARGUMENTS.items()]
    return [
        scenario(tool_calls(calls, chunk=4, interleave=True), usage(120, 30)),
        reply(FIRST_ANSWER),
    ]


def tool_result(name: str, arguments: str) -> str:
    """What a tool answers to ``arguments``, as the compact JSON a turn keeps of it."""
    data = spend_data.load_usage()
    fn = getattr(spend_data, name)
    return json.dumps(fn(data, **json.loads(arguments)), separators=(",", ":"))


def first_turn_messages(question: str) -> list[dict[str, Any]]:
    """Turn 1 of the assistant as the model must see it again in turn 2."""
    return [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                for call_id, (name, args) in TOOL_ARGUMENTS.items()
            ],
        },
        *(
            {"role": "tool", "tool_call_id": call_id, "content": tool_result(name, args)}
            for call_id, (name, args) in TOOL_ARGUMENTS.items()
        ),
        {"role": "assistant", "content": FIRST_ANSWER},
    ]


def lines_of(output: str) -> list[str]:
    """The CLI's output lines without the padding of its answer panel."""
    return [line.strip() for line in output.splitlines() if line.strip()]


def test_serve_llm_openai_writes_the_demos_answer(servers: Servers) -> None:
    answer = "Spend went up; the report has the details."
    with serve_in_thread() as model:
        model.queue(reply(answer))
        server = servers.start(
            None,
            "--llm",
            "openai",
            env={"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "sk-local-test"},
        )
        args = ("--url", server.url, "--data-dir", str(server.data_dir))
        result = cli("run", QUESTION, "--agent", "demo", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert answer in result.stdout
        (request,) = model.completions
        assert request.body["messages"][-1]["content"].startswith(f"Question: {QUESTION}")
        assert request.headers["authorization"] == "Bearer sk-local-test"


def test_serve_llm_openai_assistant_chooses_tools_and_remembers_the_thread(
    servers: Servers,
) -> None:
    with serve_in_thread() as model:
        model.queue(*assistant_first_turn(), reply(SECOND_ANSWER))
        server = servers.start(
            None,
            "--llm",
            "openai",
            env={"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "sk-local-test"},
        )
        args = ("--url", server.url, "--data-dir", str(server.data_dir))

        first = cli("run", QUESTION, "--agent", "assistant", *args)
        assert first.returncode == 0, first.stdout + first.stderr
        thread_id = thread_of(first.stdout)
        second = cli("run", FOLLOW_UP, "--agent", "assistant", "--thread", thread_id, *args)
        assert second.returncode == 0, second.stdout + second.stderr
        assert thread_of(second.stdout) == thread_id

        # Turn 1: both calls start (in the model's order), both finish (in either
        # order: they run concurrently), then the model's answer.
        took = r"\d+(\.\d+)? m?s"
        lines = lines_of(first.stdout)
        assert lines[1:4] == [
            f"assistant started: {QUESTION}",
            "▶ usage_metrics(days=30)",
            '▶ cost_breakdown(by="model", days=30)',
        ]
        done = sorted(lines[4:6])
        assert re.fullmatch(rf'✓ cost_breakdown {took} → \{{"by": "model", .*…', done[0]), done
        assert re.fullmatch(rf'✓ usage_metrics {took} → \{{"period": .*…', done[1]), done
        assert re.fullmatch(r"─+ answer from assistant ─+", lines[6])
        assert lines[7:] == [FIRST_ANSWER, lines[8]]
        assert re.fullmatch(rf"✓ completed in {took}", lines[8])
        # Turn 2: no tools, the answer.
        lines = lines_of(second.stdout)
        assert lines[1] == f"assistant started: {FOLLOW_UP}"
        assert re.fullmatch(r"─+ answer from assistant ─+", lines[2])
        assert lines[3] == SECOND_ANSWER
        assert re.fullmatch(rf"✓ completed in {took}", lines[4])
        assert len(lines) == 5

        calls, answer_1, answer_2 = model.completions
        system = {"role": "system", "content": ASSISTANT_PROMPT}
        assert calls.body["messages"] == [system, {"role": "user", "content": QUESTION}]
        assert [t["function"]["name"] for t in calls.body["tools"]] == [
            spec.name for spec in ASSISTANT_TOOLS
        ]
        # Within turn 1 the model got the tool round back (results as the run sent
        # them; the thread keeps them as compact JSON).
        turn = first_turn_messages(QUESTION)
        assert answer_1.body["messages"][:3] == [system, *turn[:2]]
        sent = answer_1.body["messages"][3:]
        assert [{**m, "content": json.loads(m["content"])} for m in sent] == [
            {**m, "content": json.loads(m["content"])} for m in turn[2:4]
        ]
        # Turn 2's request: turn 1 exactly, then the new question.
        assert answer_2.body["messages"] == [
            system,
            *first_turn_messages(QUESTION),
            {"role": "user", "content": FOLLOW_UP},
        ]
        assert answer_2.body["tools"] == calls.body["tools"]


@requires_local_model
def test_serve_llm_local_writes_a_conversation_with_real_tokens(servers: Servers) -> None:
    """Two demo turns and a plain-chat assistant turn in one thread, all written locally.

    Each answer is streamed token by token: the run's text is its final response.
    """
    server = servers.start(None, "--llm", "local")
    args = ("--url", server.url, "--data-dir", str(server.data_dir))
    first = cli("run", QUESTION, "--agent", "demo", *args, timeout=LOCAL_RUN_TIMEOUT_S)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "answer from demo" in first.stdout
    thread_id = thread_of(first.stdout)
    turns = [("demo", FOLLOW_UP), ("assistant", "Say that again in one sentence.")]
    for agent, message in turns:
        more = cli(
            "run", message, "--agent", agent, "--thread", thread_id, *args,
            timeout=LOCAL_RUN_TIMEOUT_S,
        )  # fmt: skip
        assert more.returncode == 0, more.stdout + more.stderr
        assert thread_of(more.stdout) == thread_id
        assert f"answer from {agent}" in more.stdout

    events = top_level_events(server, thread_id)
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    assert len(runs) == 3
    for run_id, agent in zip(runs, ("demo", "demo", "assistant"), strict=True):
        run = [e for e in events if e["run_id"] == run_id]
        assert run[0]["agent"] == agent
        assert run[-1]["type"] == "agent_completed", run[-1]
        text = "".join(e["data"]["delta"] for e in run if e["type"] == "text_delta")
        assert text.strip()
        assert text == run[-1]["data"]["final_response"]
