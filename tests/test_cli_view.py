"""What ``agentcast run`` and ``replay`` print for each kind of event."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from agentcast.cli_view import RunView, event_line, summarize
from agentcast.events import Event


def ev(seq: int, type_: str, run: str, data: dict[str, Any], parent: str | None = None) -> Event:
    agent = {"r1": "demo", "r2": "helper", "r3": "other"}[run]
    return Event(1, type_, f"e{seq}", "t1", run, parent, seq, 1.0 + seq, agent, data)


def render(view_events: list[Event]) -> tuple[RunView, str]:
    console = Console(record=True, width=120, color_system=None)
    view = RunView(console, "r1")
    for e in view_events:
        view.handle(e)
    return view, console.export_text()


def test_a_run_with_a_sub_agent_a_tool_and_streamed_text() -> None:
    view, out = render(
        [
            ev(1, "agent_started", "r1", {"message": "hi"}),
            ev(2, "agent_thinking", "r1", {"reasoning": "planning", "progress": 0.5}),
            ev(3, "agent_started", "r2", {"message": "sub task"}, parent="r1"),
            ev(4, "tool_executing", "r2", {"tool_call_id": "c1", "tool_name": "add",
                                           "parameters": {"a": 1, "b": 2}}, parent="r1"),
            ev(5, "tool_completed", "r2", {"tool_call_id": "c1", "tool_name": "add",
                                           "status": "success", "results": 3,
                                           "duration_ms": 12.0}, parent="r1"),
            ev(6, "agent_completed", "r2", {"status": "success", "final_response": "3",
                                            "duration_ms": 20.0}, parent="r1"),
            ev(7, "text_delta", "r1", {"message_id": "m1", "delta": "The answer "}),
            ev(8, "text_delta", "r1", {"message_id": "m1", "delta": "is 3."}),
            ev(9, "agent_completed", "r1", {"status": "success",
                                            "final_response": "The answer is 3.",
                                            "duration_ms": 1500.0}),
        ]
    )  # fmt: skip
    assert view.outcome is not None
    assert view.outcome.type == "agent_completed"
    lines = out.splitlines()
    assert lines[0] == "demo started: hi"
    assert lines[1] == "thinking planning 50%"
    assert lines[2] == "  ↳ helper sub task"
    assert lines[3] == "  ▶ add(a=1, b=2)"
    assert lines[4] == "  ✓ add 12 ms → 3"
    assert lines[5].startswith("  ✓ helper completed 20 ms")
    assert "The answer is 3." in out
    assert "completed in 1.50 s" in out


def test_events_of_other_runs_are_ignored_and_failures_are_shown() -> None:
    view, out = render(
        [
            ev(1, "agent_started", "r3", {"message": "not mine"}),
            ev(2, "agent_started", "r1", {"message": "go"}),
            ev(3, "tool_executing", "r1", {"tool_call_id": "c", "tool_name": "fetch",
                                           "parameters": {"api_key": "[REDACTED]"}}),
            ev(4, "tool_completed", "r1", {"tool_call_id": "c", "tool_name": "fetch",
                                           "status": "timeout", "error": "took too long",
                                           "duration_ms": 5000.0}),
            ev(5, "agent_error", "r1", {"error_type": "ToolTimeout", "message": "boom",
                                        "duration_ms": 5001.0}),
        ]
    )  # fmt: skip
    assert "not mine" not in out
    assert "✗ fetch timeout 5.00 s took too long" in out
    assert 'api_key="[REDACTED]"' in out
    assert view.outcome is not None
    assert view.outcome.type == "agent_error"
    assert "demo failed (ToolTimeout): boom" in out


def test_replay_lines_show_text_deltas_and_unknown_types() -> None:
    delta = event_line(ev(1, "text_delta", "r1", {"message_id": "m", "delta": "a\nb"}), deltas=True)
    assert delta is not None
    assert delta.plain == 'text "a\\nb"'
    assert event_line(ev(1, "text_delta", "r1", {"message_id": "m", "delta": "x"})) is None
    custom = event_line(ev(2, "future_type", "r1", {"k": 1}), 2)
    assert custom is not None
    assert custom.plain == '    future_type {"k": 1}'


def test_summarize_cuts_long_values() -> None:
    assert summarize({"a": "x" * 500}, limit=20) == '{"a": "xxxxxxxxxxxx…'
    assert summarize("many   spaces\nand lines") == "many spaces and lines"


def test_streamed_reasoning_is_a_replay_line_and_a_live_status() -> None:
    event = ev(2, "thinking_delta", "r1", {"message_id": "msg_r1", "delta": "Let me think"})
    assert event_line(event) is None
    line = event_line(event, deltas=True)
    assert line is not None
    assert line.plain == 'reasoning "Let me think"'
