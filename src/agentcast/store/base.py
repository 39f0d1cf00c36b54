"""Threads, runs and messages: the records beside the event log.

A thread belongs to exactly one user; every lookup takes the user id and a
record of another user answers exactly like a missing one (docs/architecture.md
invariant 4). A run's status is never written by the runner directly: it is
*projected* from the run's own events inside the transaction that appends them
(:meth:`Store.project`), so the stored status can never disagree with the
terminal event (docs/architecture.md invariant 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from ..events import EventType
from ..log.base import StoredEvent

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUS",
    "MessageRecord",
    "NewRun",
    "RunProjection",
    "RunRecord",
    "RunSpan",
    "RunStatus",
    "Store",
    "ThreadRecord",
    "project_batch",
]


class RunStatus(StrEnum):
    """A run's status as ``GET /v1/runs/{id}`` reports it."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES: Final = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})

#: The status each terminal event sets.
TERMINAL_STATUS: Final[dict[str, RunStatus]] = {
    EventType.AGENT_COMPLETED: RunStatus.COMPLETED,
    EventType.AGENT_ERROR: RunStatus.FAILED,
    EventType.AGENT_CANCELLED: RunStatus.CANCELLED,
}


class ThreadRecord(msgspec.Struct, frozen=True):
    """A conversation owned by one user."""

    thread_id: str
    user_id: str
    title: str
    last_agent: str | None
    created_at: float
    updated_at: float


class RunRecord(msgspec.Struct, frozen=True):
    """One run (or sub-run) of an agent in a thread."""

    run_id: str
    thread_id: str
    user_id: str
    agent: str
    input: str
    parent_run_id: str | None
    status: RunStatus
    created_at: float
    started_at: float | None
    ended_at: float | None
    first_seq: int | None
    last_seq: int | None
    output: str | None
    error: str | None
    idempotency_key: str | None
    queue_pos: int

    @property
    def is_active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE_STATUSES

    def to_public(self) -> dict[str, Any]:
        """The fields ``GET /v1/runs/{id}`` shows."""
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "agent": self.agent,
            "parent_run_id": self.parent_run_id,
            "status": str(self.status),
            "input": self.input,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "output": self.output,
            "error": self.error,
        }


class NewRun(msgspec.Struct, frozen=True):
    """What the runner asks the store to record when it accepts a run."""

    run_id: str
    thread_id: str
    user_id: str
    agent: str
    input: str
    parent_run_id: str | None = None
    idempotency_key: str | None = None


class RunSpan(msgspec.Struct, frozen=True):
    """Where one run's events sit in its thread's stream: all retention needs of a run.

    Retention cuts a stream only where no run's events straddle the cut and
    never at or after an active run's ``first_seq`` (agentcast.retention), so
    it reads these instead of whole records.
    """

    run_id: str
    parent_run_id: str | None
    status: RunStatus
    first_seq: int | None
    last_seq: int | None

    @property
    def is_active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE_STATUSES


class MessageRecord(msgspec.Struct, frozen=True):
    """A user or assistant message of a thread."""

    message_id: str
    thread_id: str
    run_id: str | None
    role: str
    content: str
    created_at: float


class RunProjection(msgspec.Struct):
    """The change one batch of events makes to one run."""

    run_id: str
    thread_id: str
    first_seq: int | None = None
    started_at: float | None = None
    last_seq: int = 0
    status: RunStatus | None = None
    ended_at: float | None = None
    output: str | None = None
    error: str | None = None
    is_sub_run: bool = False


class _TerminalData(msgspec.Struct):
    final_response: str | None = None
    message: str | None = None
    reason: str | None = None
    error_type: str | None = None


class _EnvelopeData(msgspec.Struct):
    data: _TerminalData


_terminal_decoder = msgspec.json.Decoder(_EnvelopeData)


def project_batch(events: Sequence[StoredEvent]) -> list[RunProjection]:
    """Fold a committed batch into one change per run (one UPDATE per run, not per event).

    Only terminal events are decoded (to record the output or error); every
    other event only moves ``last_seq``.
    """
    changes: dict[str, RunProjection] = {}
    for ev in events:
        change = changes.get(ev.run_id)
        if change is None:
            change = changes[ev.run_id] = RunProjection(
                ev.run_id, ev.thread_id, is_sub_run=ev.parent_run_id is not None
            )
        change.last_seq = ev.seq
        if ev.type == EventType.AGENT_STARTED:
            change.first_seq = ev.seq if change.first_seq is None else change.first_seq
            change.started_at = ev.ts
        elif ev.type in TERMINAL_STATUS:
            change.status = TERMINAL_STATUS[ev.type]
            change.ended_at = ev.ts
            data = _terminal_decoder.decode(ev.raw).data
            if ev.type == EventType.AGENT_COMPLETED:
                change.output = data.final_response
            elif ev.type == EventType.AGENT_ERROR:
                change.error = f"{data.error_type}: {data.message}"
            else:
                change.error = data.reason
    return list(changes.values())


@runtime_checkable
class Store(Protocol):
    """Threads, runs and messages, scoped by user."""

    async def open(self) -> None:
        """Prepare storage."""
        ...

    async def close(self) -> None:
        """Release storage."""
        ...

    async def create_thread(self, user_id: str, title: str = "") -> ThreadRecord:
        """Create a thread with a server-generated id."""
        ...

    async def get_thread(self, user_id: str, thread_id: str) -> ThreadRecord:
        """The thread, or :class:`~agentcast.errors.NotFound` (also for another user's)."""
        ...

    async def check_thread(self, user_id: str, thread_id: str) -> None:
        """Raise :class:`~agentcast.errors.NotFound` unless ``user_id`` owns the thread.

        The authorisation of every ``subscribe`` and run start: a thread's
        owner never changes, so a backend may answer it from memory.
        """
        ...

    async def list_threads(
        self, user_id: str, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[ThreadRecord]:
        """The user's threads, newest first; ``before`` is ``(updated_at, thread_id)``."""
        ...

    async def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        """Record a queued run, its user message and the thread's last agent.

        Returns ``(record, created)``; with an ``idempotency_key`` the user already
        used, the existing run and ``False``.
        """
        ...

    async def get_run(self, user_id: str, run_id: str) -> RunRecord:
        """The run, or :class:`~agentcast.errors.NotFound` (also for another user's)."""
        ...

    async def find_run(self, run_id: str) -> RunRecord | None:
        """Internal lookup without the user check (runner, recovery)."""
        ...

    async def find_run_by_key(self, user_id: str, idempotency_key: str) -> RunRecord | None:
        """The user's run started with ``idempotency_key``, if any."""
        ...

    async def active_runs(self) -> list[RunRecord]:
        """Runs left queued or running, in queue order (crash recovery)."""
        ...

    async def list_runs(self, user_id: str, thread_id: str) -> list[RunRecord]:
        """The runs of one of the user's threads, oldest first."""
        ...

    async def list_messages(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        """The thread's messages, oldest first."""
        ...

    async def thread_ids(self, after: str | None = None, limit: int = 1000) -> list[str]:
        """Up to ``limit`` thread ids of every user, in id order, after ``after``.

        Internal, without a user check: the retention sweep pages through
        every thread with it, resuming where its last pass stopped.
        """
        ...

    async def history(
        self, thread_id: str, before_pos: int, max_turns: int, max_tokens: int
    ) -> list[list[dict[str, Any]]]:
        """The thread's turns before queue position ``before_pos``, oldest first.

        A turn is one ended top-level run as chat-completion messages, stored
        when its terminal event was projected (agentcast.agents.history); the
        newest turns that fit ``max_turns`` and ``max_tokens``
        (:func:`~agentcast.agents.history.turns_that_fit`). Internal, no user
        check: the runner reads it for the run it starts.
        """
        ...

    async def run_spans(self, thread_id: str, from_seq: int = 1) -> list[RunSpan]:
        """The thread's runs that may have events at or after ``from_seq``, in queue order.

        Every active run (a queued one has no ``first_seq`` yet) and every run
        whose ``last_seq >= from_seq``; runs wholly below it are left out, so
        the answer stays as small as the retained stream. Internal, no user check.
        """
        ...
