"""``agentcast replay`` follows the events page's cursor, not the page's length.

Pages are bounded in bytes as well as in count, so a page shorter than the
count asked for is not the end of the thread: only ``next_after_seq: null`` is.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from agentcast import cli


def envelope(seq: int) -> dict[str, Any]:
    return {
        "type": "agent_thinking",
        "event_id": f"ev_{seq}",
        "thread_id": "th_1",
        "run_id": "run_1",
        "parent_run_id": None,
        "seq": seq,
        "ts": 1.0,
        "agent": "echo",
        "data": {"reasoning": f"step {seq}"},
    }


def test_replay_follows_next_after_seq_through_short_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {
        0: {"thread_id": "th_1", "epoch": "e", "events": [envelope(1)], "next_after_seq": 1},
        1: {"thread_id": "th_1", "epoch": "e", "events": [envelope(2), envelope(3)],
            "next_after_seq": 3},
        3: {"thread_id": "th_1", "epoch": "e", "events": [envelope(4)], "next_after_seq": None},
    }  # fmt: skip
    asked: list[int] = []

    def fake_get(url: str, token: str, path: str, params: dict[str, Any] | None = None) -> Any:
        assert params is not None
        asked.append(params["after_seq"])
        return pages[params["after_seq"]]

    monkeypatch.setattr(cli, "_get", fake_get)
    result = CliRunner().invoke(
        cli.app, ["replay", "th_1", "--json", "--url", "http://127.0.0.1:1", "--token", "t"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in result.output.splitlines()] == [1, 2, 3, 4]
    assert asked == [0, 1, 3]
