"""One conformance suite for every EventLog backend.

Each test takes the ``backend`` fixture — memory, SQLite ``FULL``, SQLite
``NORMAL`` and PostgreSQL (a fresh database per test) — and checks
docs/architecture.md invariants 2 (stream positions, catch-up → live) and 7
(idempotence) with exact assertions: every event, in order, no gap, no
duplicate.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentcast.db.postgres import PostgresDatabase
from agentcast.db.sqlite import SqliteDatabase
from agentcast.errors import AppendRejected, LogUnavailable
from agentcast.events import Event, decode_event, encode_payload
from agentcast.log import (
    EventDraft,
    EventLog,
    Follower,
    FollowerClosed,
    HistoryLost,
    MemoryLog,
    SqliteLog,
    StoredEvent,
    StreamInfo,
    resolve_start,
)
from agentcast.log.postgres import PostgresLog
from agentcast.types import new_event_id
from tests.pg_support import fresh_database
from tests.utils import MS

OnBatch = Callable[[list[StoredEvent]], None]


def draft(
    thread_id: str = "th_1",
    *,
    event_id: str | None = None,
    run_id: str = "run_1",
    reasoning: str = "thinking",
    parent_run_id: str | None = None,
) -> EventDraft:
    """A valid ``agent_thinking`` draft."""
    return EventDraft(
        event_id=event_id or new_event_id(),
        thread_id=thread_id,
        run_id=run_id,
        parent_run_id=parent_run_id,
        type="agent_thinking",
        ts=1764115200.125,
        agent="demo",
        data=encode_payload("agent_thinking", {"reasoning": reasoning}),
    )


async def take(follower: Follower, count: int, within: float = 5.0) -> list[StoredEvent]:
    """Exactly ``count`` events from ``follower`` (fails on timeout)."""
    out: list[StoredEvent] = []
    async with asyncio.timeout(within):
        while len(out) < count:
            out.extend(await follower.next_batch(count - len(out)))
    assert len(out) == count
    return out


async def assert_idle(follower: Follower, wait: float = 30 * MS) -> None:
    """Nothing more is delivered within ``wait``."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            await follower.next_batch()


def seqs(events: list[StoredEvent]) -> list[int]:
    return [e.seq for e in events]


@dataclass
class Backend:
    """Makes logs of one kind and cleans them up; ``restart`` reopens the same storage."""

    kind: str
    tmp_path: Path
    made: list[tuple[EventLog, SqliteDatabase | PostgresDatabase | None]]
    #: The database of the ``postgres`` kind.
    pg_url: str | None = None

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    async def make(
        self,
        *,
        on_batch: OnBatch | None = None,
        tail_events: int = 1024,
        tail_threads: int = 10_000,
    ) -> EventLog:
        log: EventLog
        db: SqliteDatabase | PostgresDatabase | None = None
        if self.kind == "memory":
            log = MemoryLog(
                projector=on_batch, tail_events_per_thread=tail_events, tail_threads=tail_threads
            )
        elif self.kind == "postgres":
            assert self.pg_url is not None
            db = PostgresDatabase(self.pg_url, pool_max_size=4)

            async def pg_projector(_conn: object, events: list[StoredEvent]) -> None:
                assert on_batch is not None
                on_batch(events)

            log = PostgresLog(
                db,
                projector=None if on_batch is None else pg_projector,
                tail_events_per_thread=tail_events,
                tail_threads=tail_threads,
            )
        else:
            db = SqliteDatabase(self.tmp_path / "data", synchronous=self.kind.split("-")[1])  # type: ignore[arg-type]
            projector = None if on_batch is None else (lambda _conn, events: on_batch(events))
            log = SqliteLog(
                db,
                projector=projector,
                tail_events_per_thread=tail_events,
                tail_threads=tail_threads,
            )
        await log.open()
        self.made.append((log, db))
        return log

    async def restart(self, log: EventLog) -> EventLog:
        """Close ``log`` (and its database) and open a new one on the same storage."""
        await self.close(log)
        return await self.make()

    async def close(self, log: EventLog) -> None:
        for item in list(self.made):
            if item[0] is log:
                self.made.remove(item)
                await log.close()
                if item[1] is not None:
                    await item[1].close()


@pytest.fixture(params=["memory", "sqlite-FULL", "sqlite-NORMAL", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made: list[tuple[EventLog, SqliteDatabase | PostgresDatabase | None]] = []
    # Not the pg_url fixture: an async fixture cannot request another one lazily.
    pg_url = await fresh_database() if request.param == "postgres" else None
    yield Backend(request.param, tmp_path, made, pg_url)
    for log, db in made:
        await log.close()
        if db is not None:
            await db.close()


@pytest.fixture
async def log(backend: Backend) -> EventLog:
    return await backend.make()


# --- append ------------------------------------------------------------------


async def test_is_an_event_log(log: EventLog) -> None:
    assert isinstance(log, EventLog)
    assert isinstance(await log.follow("th_1"), Follower)


async def test_seqs_are_contiguous_from_one_per_thread(log: EventLog) -> None:
    a = await log.append([draft("th_a"), draft("th_a")])
    b = await log.append([draft("th_b"), draft("th_a"), draft("th_b")])
    assert seqs(a) == [1, 2]
    assert [(e.thread_id, e.seq) for e in b] == [("th_b", 1), ("th_a", 3), ("th_b", 2)]
    assert seqs(await log.read("th_a")) == [1, 2, 3]
    assert seqs(await log.read("th_b")) == [1, 2]


async def test_empty_append_stores_nothing(log: EventLog) -> None:
    assert await log.append([]) == []
    assert (await log.info("th_1")).last_seq == 0


async def test_concurrent_appends_get_contiguous_non_overlapping_seqs(log: EventLog) -> None:
    batches = [[draft() for _ in range(1 + i % 3)] for i in range(40)]
    results = await asyncio.gather(*(log.append(b) for b in batches))
    for batch, stored in zip(batches, results, strict=True):
        assert [e.event_id for e in stored] == [d.event_id for d in batch]
        assert seqs(stored) == list(range(stored[0].seq, stored[0].seq + len(batch)))
    everything = sorted(seqs([e for stored in results for e in stored]))
    assert everything == list(range(1, sum(len(b) for b in batches) + 1))


async def test_same_event_id_twice_is_stored_once(log: EventLog) -> None:
    d = draft()
    first = await log.append([d])
    again = await log.append([d])
    assert again == first
    assert await log.read("th_1") == first
    assert seqs(await log.append([draft()])) == [2]


async def test_same_event_id_inside_one_batch_is_stored_once(log: EventLog) -> None:
    d, e = draft(), draft()
    stored = await log.append([d, d, e, d])
    assert seqs(stored) == [1, 1, 2, 1]
    assert stored[0] == stored[1] == stored[3]
    assert [x.event_id for x in await log.read("th_1")] == [d.event_id, e.event_id]


async def test_same_event_id_appended_concurrently_is_stored_once(log: EventLog) -> None:
    d = draft()
    results = await asyncio.gather(*(log.append([d]) for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert seqs(results[0]) == [1]
    assert seqs(await log.read("th_1")) == [1]


async def test_envelope_decodes_to_exactly_the_draft_plus_seq(log: EventLog) -> None:
    d = draft(parent_run_id="run_parent", reasoning="ünïcode ✓")
    (stored,) = await log.append([d])
    assert decode_event(stored.raw) == Event(
        v=1,
        type=d.type,
        event_id=d.event_id,
        thread_id=d.thread_id,
        run_id=d.run_id,
        parent_run_id=d.parent_run_id,
        seq=1,
        ts=d.ts,
        agent=d.agent,
        data=json.loads(d.data),
    )
    assert (stored.thread_id, stored.event_id, stored.run_id, stored.parent_run_id) == (
        d.thread_id,
        d.event_id,
        d.run_id,
        d.parent_run_id,
    )
    assert (stored.type, stored.ts) == (d.type, d.ts)
    assert await log.read("th_1") == [stored]


# --- read and info -------------------------------------------------------------


async def test_read_after_and_limit(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(10)])
    assert await log.read("th_1", after_seq=3, limit=4) == stored[3:7]
    assert await log.read("th_1", after_seq=0, limit=1000) == stored
    assert await log.read("th_1", after_seq=9) == stored[9:]
    assert await log.read("th_1", after_seq=10) == []
    assert await log.read("th_1", after_seq=0, limit=0) == []
    assert await log.read("th_unknown") == []


async def test_info_creates_a_stable_epoch_before_the_first_event(log: EventLog) -> None:
    before = await log.info("th_1")
    assert (before.first_seq, before.last_seq) == (1, 0)
    assert (await log.info("th_1")) == before
    await log.append([draft(), draft()])
    assert await log.info("th_1") == StreamInfo(before.epoch, 1, 2)


# --- trim ------------------------------------------------------------------------


async def test_trim_deletes_the_prefix_and_keeps_the_epoch(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(10)])
    epoch = (await log.info("th_1")).epoch
    assert await log.trim("th_1", 4) == 3
    assert await log.info("th_1") == StreamInfo(epoch, 4, 10)
    assert await log.read("th_1") == stored[3:]
    assert await log.trim("th_1", 2) == 0
    assert await log.trim("th_1", 100) == 7  # capped at the head
    assert await log.info("th_1") == StreamInfo(epoch, 11, 10)
    assert await log.read("th_1") == []
    assert seqs(await log.append([draft()])) == [11]
    assert await log.trim("th_unknown", 5) == 0


# --- projector -----------------------------------------------------------------------


async def test_projector_sees_each_committed_batch_in_order(backend: Backend) -> None:
    calls: list[list[StoredEvent]] = []
    log = await backend.make(on_batch=calls.append)
    a, b, c = draft(), draft(), draft()
    first = await log.append([a, b])
    second = await log.append([a, c])  # a is a duplicate: only c is new
    await log.append([a])  # nothing new: no call
    assert calls == [first, [second[1]]]


async def test_a_failing_projector_stores_nothing_and_consumes_no_seq(backend: Backend) -> None:
    def project(events: list[StoredEvent]) -> None:
        if any(e.run_id == "run_bad" for e in events):
            raise ValueError("projection failed")

    log = await backend.make(on_batch=project)
    await log.append([draft()])
    # Permanent for this call (a retry would fail the same way), not LogUnavailable.
    with pytest.raises(AppendRejected, match="projection failed") as raised:
        await log.append([draft(run_id="run_bad"), draft()])
    assert not isinstance(raised.value, LogUnavailable)
    assert isinstance(raised.value.__cause__, ValueError)
    assert (await log.info("th_1")).last_seq == 1
    good = draft()
    assert seqs(await log.append([good])) == [2]
    assert [e.event_id for e in await log.read("th_1", 1)] == [good.event_id]


async def test_one_failing_append_does_not_fail_concurrent_ones(backend: Backend) -> None:
    def project(events: list[StoredEvent]) -> None:
        if any(e.run_id == "run_bad" for e in events):
            raise ValueError("projection failed")

    log = await backend.make(on_batch=project)
    ok1, bad, ok2 = [draft()], [draft(run_id="run_bad")], [draft(), draft()]
    results = await asyncio.gather(
        log.append(ok1), log.append(bad), log.append(ok2), return_exceptions=True
    )
    assert isinstance(results[1], AppendRejected)
    assert isinstance(results[1].__cause__, ValueError)
    assert [e.event_id for e in await log.read("th_1")] == [d.event_id for d in ok1 + ok2]
    assert seqs(await log.read("th_1")) == [1, 2, 3]


# --- follow ----------------------------------------------------------------------------


async def test_follow_from_zero_then_live(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(3)])
    follower = await log.follow("th_1")
    assert follower.cursor == 0
    assert await take(follower, 3) == stored
    assert follower.cursor == 3
    await assert_idle(follower)
    live = await log.append([draft(), draft()])
    assert await take(follower, 2) == live
    await follower.aclose()


async def test_follow_from_the_middle(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(6)])
    info = await log.info("th_1")
    follower = await log.follow("th_1", 4, info.epoch)
    assert (follower.start.after_seq, follower.start.recovered) == (4, True)
    assert await take(follower, 2) == stored[4:]
    await assert_idle(follower)
    await follower.aclose()


async def test_follow_from_the_head_delivers_only_new_events(log: EventLog) -> None:
    await log.append([draft() for _ in range(3)])
    follower = await log.follow("th_1", 3)
    await assert_idle(follower)
    (new,) = await log.append([draft()])
    assert await take(follower, 1) == [new]
    await follower.aclose()


async def test_next_batch_respects_max_events(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(5)])
    follower = await log.follow("th_1")
    assert await follower.next_batch(2) == stored[:2]
    assert await follower.next_batch(2) == stored[2:4]
    assert await follower.next_batch(2) == stored[4:]
    await follower.aclose()


async def test_async_iteration_yields_single_events_and_moves_the_cursor(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(4)])
    follower = await log.follow("th_1", 1)
    got: list[StoredEvent] = []
    async for event in follower:
        got.append(event)
        assert follower.cursor == event.seq
        if event.seq == 4:
            await follower.aclose()
    assert got == stored[1:]


async def test_a_waiting_follower_wakes_for_its_thread_only(log: EventLog) -> None:
    follower = await log.follow("th_1")
    pending = asyncio.ensure_future(follower.next_batch())
    await log.append([draft("th_other")])
    await asyncio.sleep(10 * MS)
    assert not pending.done()
    (mine,) = await log.append([draft("th_1")])
    assert await asyncio.wait_for(pending, 5) == [mine]
    await follower.aclose()


@pytest.mark.parametrize(
    ("tail_events", "tail_threads"), [(4, 1), (1024, 10_000)], ids=["tiny_tail", "large_tail"]
)
async def test_catch_up_to_live_with_racing_appends_has_no_gap_and_no_duplicate(
    backend: Backend, tail_events: int, tail_threads: int
) -> None:
    """Invariant 2: followers started while producers append see exactly 1..N.

    With the tiny tail, appends to another thread keep evicting ``th_1``, so
    followers keep switching between the tail and the backend read.
    """
    log = await backend.make(tail_events=tail_events, tail_threads=tail_threads)
    rng = random.Random(7)
    plans = [[1, 2, 1, 3, 1, 1, 2, 1, 1, 2] for _ in range(20)]  # batch sizes per producer
    total = sum(map(sum, plans))

    async def produce(sizes: list[int]) -> None:
        for size in sizes:
            await log.append([draft() for _ in range(size)])
            if rng.random() < 0.3:
                await asyncio.sleep(0)
            await log.append([draft("th_noise")])

    async def consume(delay: int) -> list[StoredEvent]:
        for _ in range(delay):
            await asyncio.sleep(0)
        follower = await log.follow("th_1")
        try:
            return await take(follower, total, within=20)
        finally:
            await follower.aclose()

    consumers = [asyncio.ensure_future(consume(rng.randrange(0, 300))) for _ in range(6)]
    await asyncio.gather(*(produce(sizes) for sizes in plans))
    everything = await log.read("th_1", 0, total + 10)
    assert seqs(everything) == list(range(1, total + 1))
    for result in await asyncio.gather(*consumers):
        assert result == everything


# --- resume: resolve_start as a table of named cases --------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResumeCase:
    """A resume request against a stream, and what the protocol promises for it."""

    name: str
    events: int  # events appended
    trim_before: int | None = None  # then trimmed to this
    after_seq: int  # the client's position
    epoch: str | None  # "same", "other", or None (a first subscribe)
    recovered: bool
    start_after: int  # subscribed.after_seq
    delivered: list[int]  # seqs delivered before anything new


RESUME_CASES = [
    ResumeCase(
        name="fresh_subscribe",
        events=3,
        after_seq=0,
        epoch=None,
        recovered=True,
        start_after=0,
        delivered=[1, 2, 3],
    ),
    ResumeCase(
        name="reconnect_before_first_event",
        events=0,
        after_seq=0,
        epoch="same",
        recovered=True,
        start_after=0,
        delivered=[],
    ),
    ResumeCase(
        name="resume_from_the_middle",
        events=5,
        after_seq=2,
        epoch="same",
        recovered=True,
        start_after=2,
        delivered=[3, 4, 5],
    ),
    ResumeCase(
        name="duplicate_last_event",
        events=5,
        after_seq=5,
        epoch="same",
        recovered=True,
        start_after=5,
        delivered=[],
    ),
    ResumeCase(
        name="epoch_changed",
        events=5,
        after_seq=2,
        epoch="other",
        recovered=False,
        start_after=0,
        delivered=[1, 2, 3, 4, 5],
    ),
    ResumeCase(
        name="epoch_changed_after_trim",
        events=8,
        trim_before=4,
        after_seq=6,
        epoch="other",
        recovered=False,
        start_after=3,
        delivered=[4, 5, 6, 7, 8],
    ),
    ResumeCase(
        name="from_position_that_already_gone",
        events=10,
        trim_before=6,
        after_seq=2,
        epoch="same",
        recovered=False,
        start_after=5,
        delivered=[6, 7, 8, 9, 10],
    ),
    ResumeCase(
        name="from_position_at_the_trim_edge",
        events=10,
        trim_before=6,
        after_seq=5,
        epoch="same",
        recovered=True,
        start_after=5,
        delivered=[6, 7, 8, 9, 10],
    ),
    ResumeCase(
        name="beyond_head",
        events=3,
        after_seq=7,
        epoch="same",
        recovered=False,
        start_after=0,
        delivered=[1, 2, 3],
    ),
    ResumeCase(
        name="beyond_head_of_an_empty_stream",
        events=0,
        after_seq=1,
        epoch=None,
        recovered=False,
        start_after=0,
        delivered=[],
    ),
    ResumeCase(
        name="everything_trimmed_resume_at_head",
        events=4,
        trim_before=5,
        after_seq=4,
        epoch="same",
        recovered=True,
        start_after=4,
        delivered=[],
    ),
    ResumeCase(
        name="everything_trimmed_resume_before",
        events=4,
        trim_before=5,
        after_seq=1,
        epoch="same",
        recovered=False,
        start_after=4,
        delivered=[],
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in RESUME_CASES])
def test_resolve_start_rules(case: ResumeCase) -> None:
    first = 1 if case.trim_before is None else min(case.trim_before, case.events + 1)
    info = StreamInfo("e1", first, case.events)
    epoch = {"same": "e1", "other": "e0", None: None}[case.epoch]
    start = resolve_start(info, case.after_seq, epoch)
    assert (start.epoch, start.after_seq, start.recovered) == (
        "e1",
        case.start_after,
        case.recovered,
    )


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in RESUME_CASES])
async def test_follow_applies_the_resume_rules(log: EventLog, case: ResumeCase) -> None:
    stored = await log.append([draft() for _ in range(case.events)]) if case.events else []
    if case.trim_before is not None:
        await log.trim("th_1", case.trim_before)
    info = await log.info("th_1")
    epoch = {"same": info.epoch, "other": "not-" + info.epoch, None: None}[case.epoch]
    follower = await log.follow("th_1", case.after_seq, epoch)
    assert (follower.start.epoch, follower.start.after_seq, follower.start.recovered) == (
        info.epoch,
        case.start_after,
        case.recovered,
    )
    assert follower.cursor == case.start_after
    got = await take(follower, len(case.delivered))
    assert got == [stored[seq - 1] for seq in case.delivered]
    await assert_idle(follower)
    (new,) = await log.append([draft()])  # then live, with no gap
    assert new.seq == case.events + 1
    assert await take(follower, 1) == [new]
    await follower.aclose()


# --- how followers end -----------------------------------------------------------------------


async def test_aclose_ends_a_pending_next_batch(log: EventLog) -> None:
    follower = await log.follow("th_1")
    pending = asyncio.ensure_future(follower.next_batch())
    await asyncio.sleep(5 * MS)
    await follower.aclose()
    with pytest.raises(FollowerClosed, match="follower closed"):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(FollowerClosed):
        await follower.next_batch()


async def test_closing_the_log_ends_its_followers(backend: Backend) -> None:
    log = await backend.make()
    follower = await log.follow("th_1")
    pending = asyncio.ensure_future(follower.next_batch())
    await asyncio.sleep(5 * MS)
    await backend.close(log)
    with pytest.raises(FollowerClosed, match="log closed"):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(FollowerClosed):
        await anext(aiter(follower))
    with pytest.raises(LogUnavailable):
        await log.append([draft()])


async def test_a_cancelled_next_batch_leaves_the_follower_usable(log: EventLog) -> None:
    follower = await log.follow("th_1")
    await assert_idle(follower)  # cancels a pending next_batch
    (event,) = await log.append([draft()])
    assert await take(follower, 1) == [event]
    await follower.aclose()


async def test_events_trimmed_under_a_follower_are_reported_not_skipped(log: EventLog) -> None:
    stored = await log.append([draft() for _ in range(10)])
    follower = await log.follow("th_1")
    assert await follower.next_batch(2) == stored[:2]
    await log.trim("th_1", 6)
    with pytest.raises(HistoryLost) as lost:
        await follower.next_batch()
    assert (lost.value.cursor, lost.value.next_seq) == (2, 6)
    assert isinstance(lost.value, LogUnavailable)  # one remedy: follow again
    again = await log.follow("th_1", follower.cursor, follower.start.epoch)
    assert (again.start.after_seq, again.start.recovered) == (5, False)
    assert await take(again, 5) == stored[5:]
    await again.aclose()
    await follower.aclose()


# --- restart: the epoch changes if and only if history is lost ------------------------------------


async def test_restart_keeps_epoch_and_seqs_iff_history_survives(backend: Backend) -> None:
    log = await backend.make()
    stored = await log.append([draft() for _ in range(3)])
    epoch = (await log.info("th_1")).epoch
    log = await backend.restart(log)
    info = await log.info("th_1")
    if backend.durable:
        assert info == StreamInfo(epoch, 1, 3)
        assert await log.read("th_1") == stored
        assert seqs(await log.append([draft()])) == [4]
        follower = await log.follow("th_1", 3, epoch)
        assert follower.start.recovered is True
    else:
        assert info.epoch != epoch
        assert (info.first_seq, info.last_seq) == (1, 0)
        follower = await log.follow("th_1", 3, epoch)
        assert (follower.start.after_seq, follower.start.recovered) == (0, False)
    await follower.aclose()
