"""An in-memory store, the companion of :class:`~agentcast.log.memory.MemoryLog`.

Its :meth:`MemoryStore.project` is passed to the memory log as its projector,
so run statuses change in the same step as the append, exactly as the SQLite
store does inside the append's transaction.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ..agents.history import TURN_EVENT_TYPES, TurnBuilder, turn_chars, turns_that_fit
from ..errors import NotFound
from ..log.base import StoredEvent
from ..types import new_thread_id
from .base import (
    ACTIVE_STATUSES,
    TERMINAL_STATUS,
    MessageRecord,
    NewRun,
    RunRecord,
    RunSpan,
    RunStatus,
    ThreadRecord,
    project_batch,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Threads, runs and messages in dicts; for tests and the memory backend."""

    def __init__(self) -> None:
        self._threads: dict[str, ThreadRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        #: A run's ``last_seq`` moves with every event: kept here, folded into
        #: its record when read, so that an event costs a dict store, not a new
        #: RunRecord (the projection ran once per event per run).
        self._last_seq: dict[str, int] = {}
        self._messages: dict[str, list[MessageRecord]] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        #: Conversation history: by thread, ``(queue_pos, chars, messages)`` by run id;
        #: and the turns of running top-level runs, built as their events come.
        self._turns: dict[str, dict[str, tuple[int, int, list[dict[str, Any]]]]] = {}
        self._building: dict[str, TurnBuilder] = {}
        self._positions = itertools.count(1)
        self._message_ids = itertools.count(1)

    async def open(self) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to release."""

    async def create_thread(self, user_id: str, title: str = "") -> ThreadRecord:
        now = time.time()
        record = ThreadRecord(new_thread_id(), user_id, title, None, now, now)
        self._threads[record.thread_id] = record
        self._messages[record.thread_id] = []
        return record

    async def get_thread(self, user_id: str, thread_id: str) -> ThreadRecord:
        record = self._threads.get(thread_id)
        if record is None or record.user_id != user_id:
            raise NotFound("thread not found")
        return record

    async def check_thread(self, user_id: str, thread_id: str) -> None:
        await self.get_thread(user_id, thread_id)

    async def list_threads(
        self, user_id: str, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[ThreadRecord]:
        mine = sorted(
            (t for t in self._threads.values() if t.user_id == user_id),
            key=lambda t: (t.updated_at, t.thread_id),
            reverse=True,
        )
        if before is not None:
            mine = [t for t in mine if (t.updated_at, t.thread_id) < before]
        return mine[:limit]

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        thread = await self.get_thread(run.user_id, run.thread_id)
        if run.idempotency_key is not None:
            existing = self._idempotency.get((run.user_id, run.idempotency_key))
            record = None if existing is None else self._run(existing)
            if record is not None:
                return record, False
        now = time.time()
        record = RunRecord(
            run.run_id, run.thread_id, run.user_id, run.agent, run.input, run.parent_run_id,
            RunStatus.QUEUED, now, None, None, None, None, None, None, run.idempotency_key,
            next(self._positions),
        )  # fmt: skip
        self._runs[record.run_id] = record
        if run.idempotency_key is not None:
            self._idempotency[(run.user_id, run.idempotency_key)] = record.run_id
        if run.parent_run_id is None:
            self._add_message(run.thread_id, run.run_id, "user", run.input, now)
            self._threads[thread.thread_id] = msgspec.structs.replace(
                thread, last_agent=run.agent, updated_at=now
            )
        return record, True

    async def get_run(self, user_id: str, run_id: str) -> RunRecord:
        record = self._run(run_id)
        if record is None or record.user_id != user_id:
            raise NotFound("run not found")
        return record

    async def find_run(self, run_id: str) -> RunRecord | None:
        return self._run(run_id)

    async def find_run_by_key(self, user_id: str, idempotency_key: str) -> RunRecord | None:
        run_id = self._idempotency.get((user_id, idempotency_key))
        return None if run_id is None else self._run(run_id)

    async def active_runs(self) -> list[RunRecord]:
        return sorted(
            [self._current(r) for r in list(self._runs.values()) if r.status in ACTIVE_STATUSES],
            key=lambda r: r.queue_pos,
        )

    async def list_runs(self, user_id: str, thread_id: str) -> list[RunRecord]:
        await self.get_thread(user_id, thread_id)
        return sorted(
            [self._current(r) for r in list(self._runs.values()) if r.thread_id == thread_id],
            key=lambda r: r.queue_pos,
        )

    async def list_messages(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        await self.get_thread(user_id, thread_id)
        return list(self._messages[thread_id])

    async def thread_ids(self, after: str | None = None, limit: int = 1000) -> list[str]:
        ids = sorted(t for t in self._threads if after is None or t > after)
        return ids[:limit]

    async def history(
        self, thread_id: str, before_pos: int, max_turns: int, max_tokens: int
    ) -> list[list[dict[str, Any]]]:
        earlier = sorted(
            (turn for turn in self._turns.get(thread_id, {}).values() if turn[0] < before_pos),
            key=lambda turn: turn[0],
            reverse=True,
        )[: max(max_turns, 0)]
        fit = turns_that_fit([chars for _, chars, _ in earlier], max_turns, max_tokens)
        # Copies, as the SQLite store's are: a run cannot change another's history.
        return [msgspec.json.decode(msgspec.json.encode(m)) for _, _, m in reversed(earlier[:fit])]

    async def run_spans(self, thread_id: str, from_seq: int = 1) -> list[RunSpan]:
        runs = sorted(
            (self._current(r) for r in list(self._runs.values()) if r.thread_id == thread_id),
            key=lambda r: r.queue_pos,
        )
        return [
            RunSpan(r.run_id, r.parent_run_id, r.status, r.first_seq, r.last_seq)
            for r in runs
            if r.is_active or (r.last_seq is not None and r.last_seq >= from_seq)
        ]

    def project(self, events: Sequence[StoredEvent]) -> None:
        """Apply a committed batch to the runs it touches (the log's projector)."""
        self._project_turns(events)
        for change in project_batch(events):
            record = self._runs.get(change.run_id)
            if record is None:
                continue
            if change.first_seq is None and change.started_at is None and change.status is None:
                self._last_seq[change.run_id] = change.last_seq  # the common case
                continue
            self._last_seq.pop(change.run_id, None)
            updates: dict[str, object] = {"last_seq": change.last_seq}
            if change.first_seq is not None and record.first_seq is None:
                updates["first_seq"] = change.first_seq
            if change.started_at is not None and record.status == RunStatus.QUEUED:
                updates["status"] = RunStatus.RUNNING
                updates["started_at"] = change.started_at
            if change.status is not None:
                updates.update(
                    status=change.status,
                    ended_at=change.ended_at,
                    output=change.output,
                    error=change.error,
                )
                if change.output is not None and not change.is_sub_run:
                    self._add_message(
                        record.thread_id, record.run_id, "assistant", change.output,
                        change.ended_at or time.time(),
                    )  # fmt: skip
            self._runs[change.run_id] = _replace_run(record, updates)

    def _project_turns(self, events: Sequence[StoredEvent]) -> None:
        """Build top-level runs' turns as their events come; store each at its terminal event.

        The SQLite store reads a run's events back from the log at its terminal
        event instead; both fold them with the same :class:`TurnBuilder`.
        """
        for ev in events:
            if ev.parent_run_id is not None:
                continue
            if ev.type in TURN_EVENT_TYPES:
                record = self._runs.get(ev.run_id)
                if record is None:
                    continue
                builder = self._building.get(ev.run_id)
                if builder is None:
                    builder = self._building[ev.run_id] = TurnBuilder(record.input)
                builder.add(ev.seq, ev.type, ev.raw)
            elif ev.type in TERMINAL_STATUS:
                record = self._runs.get(ev.run_id)
                if record is None:
                    continue
                builder = self._building.pop(ev.run_id, None) or TurnBuilder(record.input)
                messages = builder.finish(ev.type, ev.raw)
                self._turns.setdefault(ev.thread_id, {})[ev.run_id] = (
                    record.queue_pos, turn_chars(messages), messages,
                )  # fmt: skip

    def _run(self, run_id: str) -> RunRecord | None:
        """The run's record with its latest ``last_seq``; ``None`` if unknown."""
        record = self._runs.get(run_id)
        return None if record is None else self._current(record)

    def _current(self, record: RunRecord) -> RunRecord:
        """``record`` with the ``last_seq`` the projection kept aside folded in."""
        seq = self._last_seq.pop(record.run_id, None)
        if seq is None:
            return record
        record = self._runs[record.run_id] = _replace_run(record, {"last_seq": seq})
        return record

    def _add_message(
        self, thread_id: str, run_id: str | None, role: str, content: str, at: float
    ) -> None:
        message_id = f"msg_{next(self._message_ids):08d}"
        self._messages[thread_id].append(
            MessageRecord(message_id, thread_id, run_id, role, content, at)
        )


def _replace_run(record: RunRecord, updates: dict[str, object]) -> RunRecord:
    """A copy of ``record`` with ``updates`` (msgspec's replace: no per-call introspection)."""
    return msgspec.structs.replace(record, **updates)
