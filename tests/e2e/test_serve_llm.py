"""``agentcast serve --llm``: the demo's answers written by a model, end to end.

A real server process, the real CLI, and a model over a socket: the local
replay server for ``--llm openai`` (an OpenAI-compatible server, reached
through the SDK's own ``OPENAI_BASE_URL``), and the bundled SmolLM2 through
llama.cpp for ``--llm local``.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.e2e.harness import Servers, cli
from tests.llm.replay import reply, serve_in_thread

QUESTION = "How much did we spend last month?"


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


def _local_model_installed() -> bool:
    try:
        from agentcast.llm.local import locate_model

        locate_model()
        import llama_cpp  # noqa: F401
    except (ImportError, FileNotFoundError):
        return False
    return True


@pytest.mark.skipif(
    os.environ.get("AGENTCAST_REQUIRE_LOCAL_MODEL") != "1" and not _local_model_installed(),
    reason="the local model is not installed (make local-model)",
)
def test_serve_llm_local_writes_the_demos_answer_with_real_tokens(servers: Servers) -> None:
    server = servers.start(None, "--llm", "local")
    args = ("--url", server.url, "--data-dir", str(server.data_dir))
    result = cli("run", QUESTION, "--agent", "demo", *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"thread (\S+) · run (\S+)", result.stdout)
    assert match, result.stdout
    replay = cli("replay", match[1], "--json", *args)
    assert replay.returncode == 0, replay.stderr
    events = [json.loads(line) for line in replay.stdout.splitlines() if line.startswith("{")]
    demo = [e for e in events if e["parent_run_id"] is None]
    assert demo[-1]["type"] == "agent_completed"
    text = "".join(e["data"]["delta"] for e in demo if e["type"] == "text_delta")
    assert text.strip()
    assert text == demo[-1]["data"]["final_response"]
