"""A state machine over the SQLite and PostgreSQL logs: appends, reads, follows, trims, restarts.

The model is a list of event ids per thread (index = seq - 1), the retained
range and the epoch. After every step each live follower must have received
exactly the retained suffix after its position, in order — or have been told
``HistoryLost`` when a trim removed events it had not read — and every
stream must match the model, epoch included, across restarts (docs/architecture.md
invariant 2; docs/event-log.md, "Positions and resume").

Hypothesis drives a private event loop with ``run_until_complete`` so that
rules stay synchronous; the tail is tiny so that followers keep switching
between the tail and the database.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentcast.db.postgres import PostgresDatabase
from agentcast.db.sqlite import SqliteDatabase
from agentcast.log import FollowerClosed, HistoryLost, SqliteLog, StreamFollower, StreamInfo
from agentcast.log.postgres import PostgresLog
from tests.log.test_contract import draft
from tests.pg_support import fresh_database

T = TypeVar("T")
THREADS = ("th_a", "th_b", "th_c")
MAX_FOLLOWERS = 4
STEP_TIMEOUT = 5.0


@dataclass
class Stream:
    """The model of one thread's stream."""

    epoch: str
    first_seq: int = 1
    ids: list[str] = field(default_factory=list)  # ids[seq - 1], trimmed ones included

    @property
    def last_seq(self) -> int:
        return len(self.ids)

    def retained_after(self, after_seq: int) -> list[str]:
        return self.ids[max(after_seq, self.first_seq - 1) :]


class SqliteLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="agentcast-stateful-"))
        self.loop = asyncio.new_event_loop()
        self.streams: dict[str, Stream] = {}
        self.followers: list[StreamFollower] = []
        self.db, self.log = self.run(self._open())

    # Helpers

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, STEP_TIMEOUT))

    async def _open(self) -> tuple[SqliteDatabase, SqliteLog]:
        db = SqliteDatabase(self.dir, checkpoint_interval=0.005)
        log = SqliteLog(db, tail_events_per_thread=4, tail_threads=2)
        await log.open()
        return db, log

    def stream(self, thread_id: str) -> Stream:
        if thread_id not in self.streams:
            info = self.run(self.log.info(thread_id))
            assert (info.first_seq, info.last_seq) == (1, 0)
            self.streams[thread_id] = Stream(info.epoch)
        return self.streams[thread_id]

    def record(self, thread_id: str, stored_ids: list[str], first_new_seq: int) -> None:
        stream = self.stream(thread_id)
        assert first_new_seq == stream.last_seq + 1
        stream.ids.extend(stored_ids)

    # Rules

    @rule(
        thread_id=st.sampled_from(THREADS),
        count=st.integers(1, 4),
        repeat_old=st.booleans(),
        repeat_new=st.booleans(),
    )
    def append(self, thread_id: str, count: int, repeat_old: bool, repeat_new: bool) -> None:
        stream = self.stream(thread_id)
        drafts = [draft(thread_id) for _ in range(count)]
        if repeat_new:
            drafts.append(drafts[0])  # invariant 7, inside one batch
        old = stream.retained_after(0)
        if repeat_old and old:
            drafts.insert(0, draft(thread_id, event_id=old[-1]))  # invariant 7, stored before
        waiting = [f for f in self.followers if f.thread_id == thread_id]
        live = [f for f in waiting if f.cursor == stream.last_seq]

        async def go() -> tuple[list[Any], list[Any]]:
            pending = [asyncio.ensure_future(f.next_batch()) for f in live]
            await asyncio.sleep(0)  # the followers are now waiting
            stored = await self.log.append(drafts)
            return stored, [await p for p in pending]

        stored, woken = self.run(go())
        head = stream.last_seq
        new_ids = [d.event_id for d in drafts[: len(drafts)] if d.event_id not in stream.ids]
        new_ids = list(dict.fromkeys(new_ids))
        assert [e.event_id for e in stored] == [d.event_id for d in drafts]
        if repeat_old and old:
            assert stored[0].seq == len(stream.ids)  # the stored event, not a new one
        self.record(thread_id, new_ids, head + 1)
        assert {e.seq for e in stored if e.event_id in new_ids} == set(
            range(head + 1, stream.last_seq + 1)
        )
        for batch in woken:  # live delivery: the first new events, in order
            assert [e.event_id for e in batch] == stream.ids[head : head + len(batch)]
            assert [e.seq for e in batch] == list(range(head + 1, head + 1 + len(batch)))
        # The live followers advanced; the invariant below drains the rest.

    @rule(
        threads=st.lists(st.sampled_from(THREADS), min_size=2, max_size=8),
    )
    def concurrent_appends(self, threads: list[str]) -> None:
        heads = {t: self.stream(t).last_seq for t in threads}
        drafts = [draft(t) for t in threads]

        async def go() -> list[Any]:
            return await asyncio.gather(*(self.log.append([d]) for d in drafts))

        results = [r[0] for r in self.run(go())]
        for thread_id in dict.fromkeys(threads):
            mine = sorted((e for e in results if e.thread_id == thread_id), key=lambda e: e.seq)
            assert [e.seq for e in mine] == list(
                range(heads[thread_id] + 1, heads[thread_id] + 1 + len(mine))
            )
            self.record(thread_id, [e.event_id for e in mine], heads[thread_id] + 1)

    @rule(thread_id=st.sampled_from(THREADS), after=st.integers(0, 40), limit=st.integers(1, 8))
    def read(self, thread_id: str, after: int, limit: int) -> None:
        stream = self.stream(thread_id)
        events = self.run(self.log.read(thread_id, after, limit))
        expected = stream.retained_after(after)[:limit]
        assert [e.event_id for e in events] == expected
        first = max(after, stream.first_seq - 1) + 1
        assert [e.seq for e in events] == list(range(first, first + len(expected)))

    @precondition(lambda self: len(self.followers) < MAX_FOLLOWERS)
    @rule(
        thread_id=st.sampled_from(THREADS),
        after=st.integers(0, 40),
        epoch=st.sampled_from(["current", "stale", "none"]),
    )
    def follow(self, thread_id: str, after: int, epoch: str) -> None:
        stream = self.stream(thread_id)
        given = {"current": stream.epoch, "stale": "stale-" + stream.epoch, "none": None}[epoch]
        follower = self.run(self.log.follow(thread_id, after, given))
        holds = (
            epoch != "stale" and stream.first_seq - 1 <= after <= stream.last_seq
        )  # docs/protocol.md: otherwise restart from the first retained event
        expected_after = after if holds else stream.first_seq - 1
        assert follower.start.epoch == stream.epoch
        assert (follower.start.after_seq, follower.start.recovered) == (expected_after, holds)
        self.followers.append(follower)

    @rule(thread_id=st.sampled_from(THREADS), before=st.integers(0, 40))
    def trim(self, thread_id: str, before: int) -> None:
        stream = self.stream(thread_id)
        deleted = self.run(self.log.trim(thread_id, before))
        cutoff = min(before, stream.last_seq + 1)
        expected = max(cutoff - stream.first_seq, 0)
        assert deleted == expected
        stream.first_seq = max(stream.first_seq, cutoff)

    @rule()
    def restart(self) -> None:
        async def go() -> tuple[SqliteDatabase, SqliteLog]:
            await self.log.close()
            for follower in self.followers:  # a closed log ends its followers
                with pytest.raises(FollowerClosed, match="log closed"):
                    await follower.next_batch()
            await self.db.close()
            return await self._open()

        self.db, self.log = self.run(go())
        self.followers = []

    # Invariants

    @invariant()
    def streams_match_the_model(self) -> None:
        for thread_id, stream in self.streams.items():
            info = self.run(self.log.info(thread_id))
            assert info == StreamInfo(stream.epoch, stream.first_seq, stream.last_seq)

    @invariant()
    def followers_get_exactly_the_retained_suffix(self) -> None:
        for follower in list(self.followers):
            stream = self.streams[follower.thread_id]
            if follower.cursor < stream.first_seq - 1:  # trimmed under it, unread
                if stream.last_seq >= stream.first_seq:
                    with pytest.raises(HistoryLost):
                        self.run(follower.next_batch())
                    self.run(follower.aclose())
                    self.followers.remove(follower)
                continue  # nothing retained to read yet: it will find out later
            while follower.cursor < stream.last_seq:
                cursor = follower.cursor
                batch = self.run(follower.next_batch(3))
                assert [e.seq for e in batch] == list(range(cursor + 1, cursor + 1 + len(batch)))
                assert [e.event_id for e in batch] == stream.ids[cursor : cursor + len(batch)]

    def teardown(self) -> None:
        async def close() -> None:
            for follower in self.followers:
                await follower.aclose()
            await self.log.close()
            await self.db.close()

        try:
            self.run(close())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


SqliteLogMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None, derandomize=True
)
TestSqliteLogStateful = SqliteLogMachine.TestCase


class PostgresLogMachine(SqliteLogMachine):
    """The same machine over :class:`PostgresLog`: one fresh database per example."""

    def __init__(self) -> None:
        self.pg_url: str | None = None
        super().__init__()

    async def _open(self) -> tuple[PostgresDatabase, PostgresLog]:  # type: ignore[override]
        if self.pg_url is None:
            self.pg_url = await fresh_database()
        db = PostgresDatabase(self.pg_url, pool_max_size=2)
        log = PostgresLog(db, tail_events_per_thread=4, tail_threads=2)
        await log.open()
        return db, log

    def teardown(self) -> None:
        url = self.pg_url
        try:
            if url is not None:

                async def close_and_drop() -> None:
                    for follower in self.followers:
                        await follower.aclose()
                    await self.log.close()
                    await self.db.close()

                self.followers = []
                self.run(close_and_drop())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


PostgresLogMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=30, deadline=None, derandomize=True
)
TestPostgresLogStateful = PostgresLogMachine.TestCase
