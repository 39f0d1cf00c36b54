"""Checks of docs/architecture.md's stream and lifecycle invariants over a thread's events.

Used by every test that runs agents: the assertions are exact (every event,
in order, no gap, no duplicate), never "mostly right".
"""

from __future__ import annotations

from collections import defaultdict

from agentcast.events import TERMINAL_TYPES, Event, decode_event
from agentcast.log.base import StoredEvent
from agentcast.store.base import TERMINAL_STATUS, RunRecord


def decode_all(stored: list[StoredEvent]) -> list[Event]:
    """Decode stored envelopes, checking each matches its stored position."""
    events = [decode_event(s.raw) for s in stored]
    for s, e in zip(stored, events, strict=True):
        assert (s.seq, s.event_id, s.thread_id, s.run_id, s.type) == (
            e.seq, e.event_id, e.thread_id, e.run_id, e.type,
        )  # fmt: skip
    return events


def assert_contiguous(events: list[Event], first: int = 1) -> None:
    """Seqs are exactly first, first+1, … with no gap and no duplicate."""
    assert [e.seq for e in events] == list(range(first, first + len(events)))
    assert len({e.event_id for e in events}) == len(events)


def assert_run_lifecycles(events: list[Event]) -> dict[str, list[Event]]:
    """Every run: started first, exactly one terminal last, tools paired, parents last.

    Returns the events grouped by run.
    """
    by_run: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_run[e.run_id].append(e)
    terminal_seq: dict[str, int] = {}
    for run_id, evs in by_run.items():
        assert evs[0].type == "agent_started", f"{run_id} does not start with agent_started"
        terminals = [e for e in evs if e.type in TERMINAL_TYPES]
        assert len(terminals) == 1, (
            f"{run_id} has {len(terminals)} terminal events: "
            f"{[(e.seq, e.type, e.data) for e in evs[-6:]]}"
        )
        assert evs[-1] is terminals[0], f"{run_id} emits after its terminal event"
        assert sum(e.type == "agent_started" for e in evs) == 1
        open_calls: dict[str, str] = {}
        for e in evs:
            if e.type == "tool_executing":
                assert e.data["tool_call_id"] not in open_calls
                open_calls[e.data["tool_call_id"]] = e.data["tool_name"]
            elif e.type == "tool_completed":
                assert open_calls.pop(e.data["tool_call_id"]) == e.data["tool_name"]
        assert open_calls == {}, f"{run_id} left tool calls open: {open_calls}"
        parents = {e.parent_run_id for e in evs}
        assert len(parents) == 1, f"{run_id} changed parent"
        terminal_seq[run_id] = terminals[0].seq
    for run_id, evs in by_run.items():
        parent = evs[0].parent_run_id
        if parent is not None:
            assert parent in by_run, f"sub-run {run_id} of unknown parent {parent}"
            assert by_run[parent][0].seq < evs[0].seq
            assert terminal_seq[run_id] < terminal_seq[parent], (
                f"parent {parent} ended before sub-run {run_id}"
            )
    return dict(by_run)


def assert_status_matches(record: RunRecord, events: list[Event]) -> None:
    """The stored status is the one the run's terminal event implies."""
    terminal = next(e for e in events if e.type in TERMINAL_TYPES)
    assert record.status is TERMINAL_STATUS[terminal.type]
    assert record.first_seq == events[0].seq
    assert record.last_seq == terminal.seq
