"""Run admission rules (docs/python-api.md, "Starting and cancelling runs")."""

from __future__ import annotations

import pytest

from agentcast.errors import LimitExceeded
from agentcast.runner.scheduler import Scheduler, Slot


def make(**kw: int) -> Scheduler[str]:
    args = {"max_runs_per_user": 3, "max_queued_per_user": 20, "max_queued_per_thread": 10,
            "max_concurrent_runs": 100} | kw  # fmt: skip
    return Scheduler(**args)


def slot(n: int, thread: str, user: str = "u") -> Slot[str]:
    return Slot(f"r{n}", thread, user, f"r{n}", n)


def test_one_run_per_thread_in_fifo_order() -> None:
    s = make()
    a, b, c = slot(1, "t"), slot(2, "t"), slot(3, "t")
    for x in (a, b, c):
        s.enqueue(x)
    assert s.take_startable() == [a]
    assert s.take_startable() == []
    s.finished(a)
    assert s.take_startable() == [b]
    s.finished(b)
    assert s.take_startable() == [c]


def test_per_user_limit_queues_in_fifo_order_and_other_users_are_unaffected() -> None:
    s = make(max_runs_per_user=2)
    mine = [slot(i, f"t{i}") for i in range(1, 5)]
    other = slot(5, "t5", user="v")
    for x in [*mine, other]:
        s.enqueue(x)
    assert s.take_startable() == [mine[0], mine[1], other]
    assert s.queued_count == 2
    s.finished(mine[1])
    assert s.take_startable() == [mine[2]]


def test_global_limit() -> None:
    s = make(max_concurrent_runs=2)
    xs = [slot(i, f"t{i}", user=f"u{i}") for i in range(4)]
    for x in xs:
        s.enqueue(x)
    assert s.take_startable() == xs[:2]
    s.finished(xs[0])
    assert s.take_startable() == [xs[2]]


def test_queue_bounds() -> None:
    s = make(max_runs_per_user=1, max_queued_per_user=2, max_queued_per_thread=1)
    s.check_admission("u", "t0", thread_busy=False)  # can start at once
    s.enqueue(slot(0, "t0"))
    s.take_startable()
    s.check_admission("u", "t1", thread_busy=False)  # waits: allowed (0 queued)
    s.enqueue(slot(1, "t1"))
    s.check_admission("u", "t0", thread_busy=True)  # waits behind t0: allowed
    s.enqueue(slot(2, "t0"))
    with pytest.raises(LimitExceeded):
        s.check_admission("u", "t3", thread_busy=False)  # user queue full
    s2 = make(max_queued_per_thread=1)
    s2.enqueue(slot(0, "t"))
    s2.take_startable()
    s2.enqueue(slot(1, "t"))
    with pytest.raises(LimitExceeded):
        s2.check_admission("u", "t", thread_busy=True)


def test_remove_queued() -> None:
    s = make()
    a, b = slot(1, "t"), slot(2, "t")
    s.enqueue(a)
    s.enqueue(b)
    s.take_startable()
    assert s.remove_queued(b) is True
    assert s.remove_queued(b) is False
    assert s.remove_queued(a) is False  # running, not queued
    assert s.active_in_thread("t") == [a]
