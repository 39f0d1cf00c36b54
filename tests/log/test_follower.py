"""The tail and the follower on their own, with the races forced deterministically.

The contract suite runs them through every backend; here a fake backend read
lets a test commit *during* the follower's read — the exact window where
"read then subscribe" loses a wake-up (docs/architecture.md invariant 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agentcast.errors import InternalError, LogUnavailable
from agentcast.log import FollowerClosed, FollowStart, HistoryLost, StoredEvent, StreamFollower
from agentcast.log.tail import Tail
from tests.utils import MS


def ev(seq: int, thread_id: str = "th_1") -> StoredEvent:
    return StoredEvent(thread_id, seq, f"ev_{thread_id}_{seq}", "run_1", None, "custom", 0.0, b"{}")


def evs(first: int, last: int, thread_id: str = "th_1") -> list[StoredEvent]:
    return [ev(s, thread_id) for s in range(first, last + 1)]


class FakeBackend:
    """Committed events per thread; ``during_read`` runs inside each read."""

    def __init__(self, tail: Tail) -> None:
        self.tail = tail
        self.events: list[StoredEvent] = []
        self.reads = 0
        self.during_read: Callable[[], Awaitable[None]] | None = None
        self.closed = False

    def commit(self, events: list[StoredEvent]) -> None:
        self.events.extend(events)
        self.tail.publish(events)

    async def read(self, thread_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        self.reads += 1
        snapshot = [e for e in self.events if e.thread_id == thread_id and e.seq > after_seq]
        if self.during_read is not None:
            hook, self.during_read = self.during_read, None
            await hook()
        return snapshot[:limit]

    def follower(self, after_seq: int = 0, thread_id: str = "th_1") -> StreamFollower:
        return StreamFollower(
            thread_id,
            FollowStart("e1", after_seq, True),
            tail=self.tail,
            read=self.read,
            is_closed=lambda: self.closed,
        )


# --- tail ----------------------------------------------------------------------------


def test_tail_holds_a_contiguous_range_above_its_floor() -> None:
    tail = Tail(max_events=3, max_threads=10)
    assert tail.read("th_1", 0, 10) is None  # not tracked: ask the backend
    tail.publish(evs(5, 6))
    assert (tail.floor("th_1"), tail.head("th_1")) == (4, 6)
    assert tail.read("th_1", 4, 10) == evs(5, 6)
    assert tail.read("th_1", 5, 1) == evs(6, 6)
    assert tail.read("th_1", 6, 10) == []
    assert tail.read("th_1", 3, 10) is None  # below the floor: never a partial answer
    tail.publish(evs(7, 8))  # over max_events: the oldest go, the floor rises
    assert (tail.floor("th_1"), tail.head("th_1")) == (5, 8)
    assert tail.read("th_1", 4, 10) is None
    assert tail.read("th_1", 5, 10) == evs(6, 8)


def test_a_full_thread_drops_its_oldest_an_eighth_at_a_time() -> None:
    tail = Tail(max_events=16, max_threads=10)  # slack: 16 // 8 = 2 events
    for seq in range(1, 19):
        tail.publish([ev(seq)])
    assert (tail.floor("th_1"), tail.head("th_1")) == (0, 18)  # 16 + 2: nothing dropped yet
    tail.publish([ev(19)])  # one over: back to 16 in one step
    assert (tail.floor("th_1"), tail.head("th_1")) == (3, 19)
    assert tail.read("th_1", 3, 100) == evs(4, 19)
    assert tail.read("th_1", 2, 100) is None
    assert tail.nbytes == sum(len(e.raw) for e in evs(4, 19))


def test_tail_ignores_republished_events_and_restarts_after_a_gap() -> None:
    tail = Tail(max_events=10, max_threads=10)
    tail.publish(evs(1, 3))
    tail.publish(evs(2, 4))  # 2 and 3 are held already: only 4 is added, once
    assert tail.read("th_1", 0, 10) == evs(1, 4)
    tail.publish(evs(7, 7))  # 5 and 6 were never published here
    assert (tail.floor("th_1"), tail.head("th_1")) == (6, 7)
    assert tail.read("th_1", 4, 10) is None


def test_tail_evicts_the_least_recently_used_thread() -> None:
    tail = Tail(max_events=10, max_threads=2)
    tail.publish([ev(1, "a")])
    tail.publish([ev(1, "b")])
    assert tail.read("a", 0, 10) == [ev(1, "a")]  # a is now the most recent
    tail.publish([ev(1, "c")])
    assert tail.read("b", 0, 10) is None
    assert tail.read("a", 0, 10) == [ev(1, "a")]


def test_tail_trim_raises_the_floor() -> None:
    tail = Tail(max_events=10, max_threads=10)
    tail.publish(evs(1, 5))
    tail.trim("th_1", 3)
    assert tail.floor("th_1") == 2
    assert tail.read("th_1", 1, 10) is None
    assert tail.read("th_1", 2, 10) == evs(3, 5)
    tail.trim("th_1", 9)  # beyond what it holds
    assert (tail.floor("th_1"), tail.head("th_1")) == (8, 8)
    tail.trim("unknown", 3)


async def test_waiters_survive_eviction_and_are_released() -> None:
    tail = Tail(max_events=10, max_threads=1)
    waiter = tail.waiter("a")
    tail.publish([ev(1, "b")])  # "a" is not even tracked: its waiter stays
    assert not waiter.done()
    tail.publish([ev(1, "a")])
    assert waiter.done()
    assert tail.waiting_threads == 0
    other = tail.waiter("a")
    tail.discard("a", other)
    assert tail.waiting_threads == 0
    tail.close()
    assert tail.waiter("a").done()


# --- follower ---------------------------------------------------------------------------


async def test_a_commit_during_the_backend_read_is_not_lost() -> None:
    """Read returned nothing, but a commit landed meanwhile: the follower must wake."""
    backend = FakeBackend(Tail(max_events=10, max_threads=10))
    follower = backend.follower()

    async def commit_now() -> None:
        backend.commit(evs(1, 1))

    backend.during_read = commit_now  # the read's snapshot predates the commit
    assert await asyncio.wait_for(follower.next_batch(), 2) == evs(1, 1)
    assert backend.reads == 1


async def test_a_commit_during_the_backend_read_is_not_duplicated() -> None:
    backend = FakeBackend(Tail(max_events=10, max_threads=10))
    backend.commit(evs(1, 2))
    backend.tail.clear()  # force the backend read
    follower = backend.follower()

    async def commit_now() -> None:
        backend.commit(evs(3, 3))

    backend.during_read = commit_now
    assert await follower.next_batch() == evs(1, 2)
    assert await follower.next_batch() == evs(3, 3)  # from the tail, after the cursor
    assert backend.reads == 1


async def test_the_follower_switches_to_the_tail_once_it_catches_up() -> None:
    backend = FakeBackend(Tail(max_events=2, max_threads=10))
    backend.commit(evs(1, 6))  # the tail holds 5..6 only
    follower = backend.follower()
    assert await follower.next_batch(3) == evs(1, 3)
    assert await follower.next_batch(3) == evs(4, 6)
    assert backend.reads == 2
    backend.commit(evs(7, 8))
    assert await follower.next_batch() == evs(7, 8)
    assert backend.reads == 2


async def test_a_gap_in_the_backend_is_reported() -> None:
    backend = FakeBackend(Tail(max_events=10, max_threads=10))
    backend.events = evs(4, 5)  # 1..3 trimmed
    follower = backend.follower(after_seq=1)
    with pytest.raises(HistoryLost, match=r"events 2\.\.3 of thread th_1"):
        await follower.next_batch()


async def test_one_next_batch_at_a_time() -> None:
    backend = FakeBackend(Tail(max_events=10, max_threads=10))
    follower = backend.follower()
    pending = asyncio.ensure_future(follower.next_batch())
    await asyncio.sleep(MS)
    with pytest.raises(InternalError):
        await follower.next_batch()
    with pytest.raises(ValueError, match="max_events"):
        await follower.next_batch(0)
    await follower.aclose()
    assert follower.closed
    with pytest.raises(FollowerClosed, match="follower closed"):
        await pending


def test_tail_byte_budget_evicts_least_recently_used_threads() -> None:
    def ev(thread: str, seq: int, size: int) -> StoredEvent:
        return StoredEvent(thread, seq, f"{thread}-{seq}", "r", None, "custom", 0.0, b"x" * size)

    tail = Tail(max_events=100, max_threads=100, max_bytes=1000)
    tail.publish([ev("a", 1, 400), ev("a", 2, 400)])
    tail.publish([ev("b", 1, 400)])  # over budget: "a" (least recently used) goes
    assert tail.read("a", 0, 10) is None
    assert [e.seq for e in tail.read("b", 0, 10) or []] == [1]
    assert tail.nbytes == 400
    tail.publish([ev("b", 2, 400), ev("b", 3, 400)])  # one thread alone: keep the newest
    assert tail.floor("b") == 1
    assert [e.seq for e in tail.read("b", 1, 10) or []] == [2, 3]
    assert tail.nbytes == 800
    tail.trim("b", 3)
    assert tail.nbytes == 400
    tail.forget("b")
    assert tail.nbytes == 0


# --- push (the live fast path) ---------------------------------------------------------


async def test_push_hands_each_commit_to_the_sink_in_order_without_a_wake_up() -> None:
    backend = FakeBackend(Tail())
    backend.commit(evs(1, 2))
    follower = backend.follower(after_seq=0)
    got: list[list[int]] = []

    def sink(batch: list[StoredEvent]) -> bool:
        got.append([e.seq for e in batch])
        return True

    task = asyncio.create_task(follower.push(sink, 2))
    await asyncio.sleep(0)
    assert got == [[1, 2]]  # what was committed before it listened
    backend.commit(evs(3, 7))
    # Synchronously, inside the commit's notification, in batches of at most 2.
    assert got == [[1, 2], [3, 4], [5, 6], [7]]
    assert follower.cursor == 7
    await follower.aclose()
    await asyncio.wait_for(task, 1)
    assert backend.tail.waiting_threads == 0
    backend.commit(evs(8, 8))  # the listener is gone
    assert got[-1] == [7]


async def test_push_returns_when_the_sink_refuses_or_the_log_closes() -> None:
    backend = FakeBackend(Tail())
    backend.commit(evs(1, 1))  # the tail tracks the thread (else push defers at once)
    follower = backend.follower(after_seq=1)
    task = asyncio.create_task(follower.push(lambda batch: False, 10))
    await asyncio.sleep(0)
    assert not task.done()
    backend.commit(evs(2, 3))
    await asyncio.wait_for(task, 1)
    assert follower.cursor == 3  # the refused batch was still handed out
    task = asyncio.create_task(follower.push(lambda batch: True, 10))
    await asyncio.sleep(0)
    backend.closed = True
    backend.tail.close()
    await asyncio.wait_for(task, 1)
    with pytest.raises(FollowerClosed):
        await follower.next_batch()


async def test_push_leaves_a_gap_or_an_old_cursor_to_next_batch() -> None:
    backend = FakeBackend(Tail(max_events=2))
    follower = backend.follower()
    seen: list[int] = []

    def sink(batch: list[StoredEvent]) -> bool:
        seen.extend(e.seq for e in batch)
        return True

    task = asyncio.create_task(follower.push(sink, 10))
    await asyncio.sleep(0)
    backend.events.extend(evs(1, 3))  # committed, but the tail only heard of 3..3
    backend.tail.publish(evs(3, 3))
    await asyncio.wait_for(task, 1)
    assert seen == []  # never a gap: the backend read takes over
    assert [e.seq for e in await follower.next_batch(10)] == [1, 2, 3]


async def test_a_read_failing_in_an_outage_is_retried_until_the_log_answers() -> None:
    tail = Tail()
    backend = FakeBackend(tail)
    backend.events = evs(1, 3)  # committed by another process: not in this tail
    failures = 2

    async def flaky_read(thread_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        nonlocal failures
        if failures:
            failures -= 1
            raise LogUnavailable("the database is away")
        return await backend.read(thread_id, after_seq, limit)

    follower = StreamFollower(
        "th_1", FollowStart("e1", 0, True), tail=tail, read=flaky_read, is_closed=lambda: False
    )
    batch = await asyncio.wait_for(follower.next_batch(), 5.0)
    assert [e.seq for e in batch] == [1, 2, 3]
    assert failures == 0


async def test_closing_a_follower_ends_its_wait_for_an_unavailable_log() -> None:
    async def down(thread_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        raise LogUnavailable("the database is away")

    follower = StreamFollower(
        "th_1", FollowStart("e1", 0, True), tail=Tail(), read=down, is_closed=lambda: False
    )
    waiting = asyncio.create_task(follower.next_batch())
    await asyncio.sleep(100 * MS)  # let it fail and back off a few times
    assert not waiting.done()
    await follower.aclose()
    with pytest.raises(FollowerClosed):
        await asyncio.wait_for(waiting, 5.0)
