"""The demo run over a raw WebSocket, checked frame by frame against docs/protocol.md."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agentcast.events import TERMINAL_TYPES
from tests.e2e.harness import ENVELOPE_KEYS, Server, connect, events_until_terminal, request


def check_envelope(event: dict[str, Any], thread_id: str) -> None:
    """Every field of the envelope, with its type; nothing else (invariant 1)."""
    assert set(event) == ENVELOPE_KEYS, event
    assert event["v"] == 1
    assert event["thread_id"] == thread_id
    assert isinstance(event["type"], str)
    assert isinstance(event["event_id"], str)
    assert event["event_id"]
    assert isinstance(event["run_id"], str)
    assert event["run_id"]
    assert event["parent_run_id"] is None or isinstance(event["parent_run_id"], str)
    assert isinstance(event["seq"], int)
    assert isinstance(event["ts"], float)
    assert isinstance(event["agent"], str)
    assert isinstance(event["data"], dict)


def check_lifecycles(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Started first, one terminal last, tools paired, sub-runs end before parents."""
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_run[e["run_id"]].append(e)
    for run_id, evs in by_run.items():
        assert evs[0]["type"] == "agent_started", run_id
        assert [e["type"] in TERMINAL_TYPES for e in evs].count(True) == 1, run_id
        assert evs[-1]["type"] in TERMINAL_TYPES, run_id
        open_calls: dict[str, str] = {}
        for e in evs:
            if e["type"] == "tool_executing":
                open_calls[e["data"]["tool_call_id"]] = e["data"]["tool_name"]
                assert isinstance(e["data"]["parameters"], dict)
            elif e["type"] == "tool_completed":
                assert open_calls.pop(e["data"]["tool_call_id"]) == e["data"]["tool_name"]
                assert e["data"]["status"] == "success"
                assert "results" in e["data"]
                assert e["data"]["duration_ms"] >= 0
        assert open_calls == {}, run_id
        assert len({e["parent_run_id"] for e in evs}) == 1, run_id
    for evs in by_run.values():
        parent = evs[0]["parent_run_id"]
        if parent is not None:
            assert parent in by_run
            assert by_run[parent][0]["seq"] < evs[0]["seq"]
            assert evs[-1]["seq"] < by_run[parent][-1]["seq"], "parent ended before sub-run"
    return dict(by_run)


async def test_demo_run_over_websocket(shared_server: Server) -> None:
    ws = await connect(shared_server)
    try:
        accepted = await request(
            ws,
            {"type": "start_agent", "agent": "demo", "message": "where can we save money?"},
            "start-1",
        )
        assert accepted["type"] == "run_accepted", accepted
        run_id, thread_id = accepted["run_id"], accepted["thread_id"]
        assert isinstance(accepted["epoch"], str)
        assert accepted["after_seq"] == 0
        events = await events_until_terminal(ws, run_id)
        # The terminal event has arrived: the run's status is already final.
        with shared_server.http() as http:
            run = http.get(f"/v1/runs/{run_id}").json()
    finally:
        await ws.close()

    assert run["status"] == "completed", run
    assert run["last_seq"] == events[-1]["seq"]
    assert run["first_seq"] == 1
    for e in events:
        check_envelope(e, thread_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["event_id"] for e in events}) == len(events)

    top = events[0]
    assert (top["type"], top["run_id"], top["parent_run_id"]) == ("agent_started", run_id, None)
    assert top["data"] == {"message": "where can we save money?"}
    last = events[-1]
    assert (last["type"], last["run_id"]) == ("agent_completed", run_id)
    assert last["data"]["status"] == "success"
    assert last["data"]["final_response"]
    assert last["data"]["duration_ms"] > 0

    types = [e["type"] for e in events]
    first_of = {t: types.index(t) for t in reversed(types)}
    assert (
        first_of["agent_started"]
        < first_of["agent_thinking"]
        < first_of["tool_executing"]
        < first_of["tool_completed"]
        < first_of["agent_completed"]
    )
    by_run = check_lifecycles(events)
    subs = [r for r, evs in by_run.items() if evs[0]["parent_run_id"] is not None]
    assert subs, "the demo delegates to sub-agents"

    def root(r: str) -> str:
        while (parent := by_run[r][0]["parent_run_id"]) is not None:
            r = parent
        return r

    assert {root(r) for r in by_run} == {run_id}
    assert any(e["type"] == "tool_executing" for r in subs for e in by_run[r])
