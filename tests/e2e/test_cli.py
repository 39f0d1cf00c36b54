"""The ``agentcast`` command against a real server: token, run, agents, replay."""

from __future__ import annotations

import re

from tests.e2e.harness import Server, cli, free_port


def test_token_is_accepted_by_the_server(shared_server: Server) -> None:
    result = cli("token", "--user", "bob", "--data-dir", str(shared_server.data_dir))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    with shared_server.http(token) as http:
        assert http.get("/v1/agents").status_code == 200
        assert http.get("/v1/threads").status_code == 200
    with shared_server.http("not-a-token") as http:
        assert http.get("/v1/agents").status_code == 401


def test_run_echo_prints_the_answer_and_replay_prints_the_events(shared_server: Server) -> None:
    args = ("--url", shared_server.url, "--data-dir", str(shared_server.data_dir))
    result = cli("run", "hello", "--agent", "echo", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello" in result.stdout
    assert "completed" in result.stdout
    match = re.search(r"thread (\S+) · run (\S+)", result.stdout)
    assert match, result.stdout

    replay = cli("replay", match[1], *args)
    assert replay.returncode == 0, replay.stderr
    lines = [line.split() for line in replay.stdout.splitlines()[1:] if line.strip()]
    assert [line[0] for line in lines] == ["1", "2", "3"]
    assert "echo started: hello" in replay.stdout
    assert "thinking" in replay.stdout
    assert "echo completed" in replay.stdout


def test_run_a_user_agent_with_a_tool(shared_server: Server) -> None:
    args = ("--url", shared_server.url, "--data-dir", str(shared_server.data_dir))
    result = cli("run", "one two three", "--agent", "wordcount", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "word_count" in result.stdout
    assert 'text="one two three"' in result.stdout
    assert "3 words" in result.stdout


def test_run_an_unknown_agent_fails(shared_server: Server) -> None:
    args = ("--url", shared_server.url, "--data-dir", str(shared_server.data_dir))
    result = cli("run", "hi", "--agent", "nobody", *args)
    assert result.returncode == 1
    assert "not_found" in result.stderr


def test_agents_lists_builtins_and_user_agents(shared_server: Server) -> None:
    result = cli("agents", "--url", shared_server.url, "--data-dir", str(shared_server.data_dir))
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert {"demo", "echo", "countdown", "wordcount"} <= names


def test_client_commands_say_when_no_server_is_reachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("agents",), ("replay", "t"), ("run", "hi")):
        result = cli(*args, "--url", url, "--token", "x")
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "not reachable" in result.stderr, (args, result.stderr)


def test_help_lists_the_environment_variables() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for name in ("AGENTCAST_HOST", "AGENTCAST_PORT", "AGENTCAST_DATA_DIR", "AGENTCAST_JWT_SECRET"):
        assert name in result.stdout
