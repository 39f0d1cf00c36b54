"""The recovery planner: which events end runs nobody runs any more (no I/O)."""

from __future__ import annotations

from agentcast.runner.recovery import OpenToolCall, plan_tree
from agentcast.store.base import RunRecord, RunStatus


def run(run_id: str, parent: str | None = None, status: RunStatus = RunStatus.RUNNING) -> RunRecord:
    return RunRecord(
        run_id=run_id, thread_id="th", user_id="u", agent="a", input=f"in {run_id}",
        parent_run_id=parent, status=status, created_at=100.0,
        started_at=None if status is RunStatus.QUEUED else 101.0, ended_at=None,
        first_seq=None, last_seq=None, output=None, error=None, idempotency_key=None,
        queue_pos=0,
    )  # fmt: skip


def test_a_tree_ends_deepest_first_with_its_tool_calls_closed() -> None:
    top, child, grandchild = run("top"), run("child", "top"), run("grand", "child")
    never_started = run("late", "top", RunStatus.QUEUED)
    calls = {
        "child": [OpenToolCall("call_1", "search", 103.0)],
        "grand": [OpenToolCall("call_2", "fetch", 104.0), OpenToolCall("call_3", "x", 105.0)],
    }
    steps = plan_tree([top, child, never_started, grandchild], calls, now=106.0)
    assert [(s.record.run_id, s.event_type) for s in steps] == [
        ("grand", "tool_completed"),
        ("grand", "tool_completed"),
        ("grand", "agent_error"),
        ("child", "tool_completed"),
        ("child", "agent_error"),
        ("late", "agent_started"),
        ("late", "agent_error"),
        ("top", "agent_error"),
    ]
    assert steps[0].data == {
        "tool_call_id": "call_2", "tool_name": "fetch", "status": "error",
        "error": "interrupted", "duration_ms": 2000.0,
    }  # fmt: skip
    assert steps[-1].data == {
        "error_type": "interrupted",
        "message": "the server stopped while the run was in progress",
        "duration_ms": 5000.0,
    }
    assert steps[5].data == {"message": "in late"}


def test_the_same_plan_ends_a_lost_workers_tree_with_its_own_error_type() -> None:
    steps = plan_tree(
        [run("top")], {}, now=102.0, error_type="worker_lost", message="the worker was lost"
    )
    assert [(s.event_type, s.data["error_type"]) for s in steps] == [("agent_error", "worker_lost")]
    assert steps[0].data["message"] == "the worker was lost"


def test_nothing_to_end_plans_nothing() -> None:
    assert plan_tree([], {}, now=0.0) == []
