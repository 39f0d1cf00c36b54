"""The tail's notification: one failing listener must not starve the others.

Per-thread listeners are live followers' push paths (one per connection); a
listener that raises — a bug in one connection's sink — used to end the
notification loop, so the rest of that commit's threads, and the other
listeners of the same thread, never heard of the events.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentcast.log import StoredEvent
from agentcast.log.tail import Tail


def event(thread_id: str, seq: int) -> StoredEvent:
    return StoredEvent(thread_id, seq, f"ev_{thread_id}_{seq}", "run_1", None, "t", 0.0, b"{}")


def broken() -> None:
    raise RuntimeError("listener bug")


async def test_a_failing_listener_does_not_stop_the_rest_of_a_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tail = Tail()
    calls: list[str] = []
    tail.add_listener("th_1", broken)
    tail.add_listener("th_1", lambda: calls.append("th_1 second"))
    tail.add_listener("th_2", broken)
    tail.add_listener("th_2", lambda: calls.append("th_2"))
    waiter_1 = tail.waiter("th_1")
    waiter_2 = tail.waiter("th_2")  # notified after th_1's broken listener ran
    seen: list[list[StoredEvent]] = []
    tail.add_commit_listener(lambda events: seen.append(list(events)))

    batch = [event("th_1", 1), event("th_2", 1), event("th_2", 2)]
    with caplog.at_level(logging.ERROR, logger="agentcast.log.tail"):
        tail.publish(batch)

    assert calls == ["th_1 second", "th_2"]
    assert waiter_1.done()
    assert waiter_2.done()
    assert seen == [batch]
    assert tail.read("th_2", 0, 10) == batch[1:]
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["listener bug"] * 2
    assert [r.getMessage() for r in failures] == [
        "a listener of thread th_1 failed; the others still run",
        "a listener of thread th_2 failed; the others still run",
    ]


async def test_close_wakes_every_listener_and_waiter_despite_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tail = Tail()
    calls: list[str] = []
    tail.add_listener("th_1", broken)
    tail.add_listener("th_1", lambda: calls.append("th_1"))
    tail.add_listener("th_2", lambda: calls.append("th_2"))
    waiters = [tail.waiter("th_1"), tail.waiter("th_2")]

    with caplog.at_level(logging.ERROR, logger="agentcast.log.tail"):
        tail.close()

    assert calls == ["th_1", "th_2"]
    assert all(w.done() for w in waiters)
    assert tail.closed
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1
    await asyncio.sleep(0)  # nothing was left scheduled that could still raise
