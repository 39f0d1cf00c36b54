"""The bridge lifecycle table (docs/architecture.md invariant 8): every move, legal or not."""

from __future__ import annotations

import itertools

import pytest

from agentcast.errors import InvalidTransition
from agentcast.lifecycle import TRANSITIONS, BridgeState, Lifecycle

S = BridgeState


def _walk_to(target: BridgeState) -> Lifecycle:
    paths = {
        S.UNINITIALIZED: [],
        S.INITIALIZING: [S.INITIALIZING],
        S.ACTIVE: [S.INITIALIZING, S.ACTIVE],
        S.DEGRADED: [S.INITIALIZING, S.ACTIVE, S.DEGRADED],
        S.FAILED: [S.INITIALIZING, S.FAILED],
        S.CLOSED: [S.CLOSED],
    }
    lc = Lifecycle()
    for step in paths[target]:
        lc.transition(step)
    assert lc.state is target
    return lc


@pytest.mark.parametrize(("old", "new"), list(itertools.product(BridgeState, BridgeState)))
def test_every_pair_follows_the_table(old: BridgeState, new: BridgeState) -> None:
    lc = _walk_to(old)
    seen: list[tuple[BridgeState, BridgeState, str]] = []
    lc.add_observer(lambda a, b, r: seen.append((a, b, r)))
    if new in TRANSITIONS[old]:
        lc.transition(new, "why")
        assert lc.state is new
        assert seen == [(old, new, "why")]
    else:
        with pytest.raises(InvalidTransition):
            lc.transition(new)
        assert lc.state is old
        assert seen == []


def test_the_documented_paths_exist() -> None:
    assert S.DEGRADED in TRANSITIONS[S.ACTIVE]
    assert S.ACTIVE in TRANSITIONS[S.DEGRADED]
    assert S.FAILED in TRANSITIONS[S.DEGRADED]
    assert S.ACTIVE in TRANSITIONS[S.FAILED]
    assert all(S.CLOSED in TRANSITIONS[s] for s in BridgeState if s is not S.CLOSED)
    assert TRANSITIONS[S.CLOSED] == frozenset()


def test_a_failing_observer_does_not_break_the_transition() -> None:
    lc = Lifecycle()

    def boom(a: BridgeState, b: BridgeState, r: str) -> None:
        raise RuntimeError("observer bug")

    calls: list[BridgeState] = []
    lc.add_observer(boom)
    lc.add_observer(lambda a, b, r: calls.append(b))
    lc.transition(S.INITIALIZING)
    assert lc.state is S.INITIALIZING
    assert calls == [S.INITIALIZING]
