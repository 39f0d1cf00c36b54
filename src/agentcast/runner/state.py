"""The runner's per-run objects, and the two waiting primitives it is built on.

Everything the runner knows about a run lives in a :class:`RunState` held by
the runner instance, never in module globals: one user's run cannot see or
change another's. A run and its sub-runs form a tree (``parent`` and
``children``), which is what cancellation walks: cancelling a run cancels
its whole subtree, and a parent never writes its terminal event while a
child is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

from ..agents.whole import finish_anyway
from ..store.base import RunRecord, RunStatus

__all__ = [
    "CANCELLED",
    "CANCELLED_BY_USER",
    "INTERRUPTED",
    "PARENT_ENDED",
    "SHUTTING_DOWN",
    "TIMED_OUT",
    "CancelResult",
    "Outcome",
    "RunState",
    "RunTicket",
    "UserLocks",
    "finish_anyway",
    "request_cancel",
]

# Cancellation reasons (the ``reason`` of ``agent_cancelled``).
CANCELLED_BY_USER: Final = "cancelled by user"
CANCELLED: Final = "cancelled"
INTERRUPTED: Final = "interrupted by a new message"
SHUTTING_DOWN: Final = "server shutting down"
TIMED_OUT: Final = "timeout"
PARENT_ENDED: Final = "parent run ended"


@dataclass(frozen=True, slots=True)
class RunTicket:
    """What a start returns: where the run's events will appear.

    A client that follows ``thread_id`` from ``(epoch, after_seq)`` receives
    every event of the run (the ``run_accepted`` reply of the wire protocol).
    """

    run_id: str
    thread_id: str
    epoch: str
    after_seq: int
    created: bool = True


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel returns.

    ``status`` is the run's status when the cancel was decided: ``queued`` or
    ``running`` when the cancel takes effect (the run's terminal event is
    still to come), else the run's final status (it had already ended and
    gets no second terminal event). ``(epoch, after_seq)`` is a position in
    the thread's stream that lies before the run's terminal event whenever
    the cancel takes effect: following the thread from it is sure to see
    that event.

    Nothing is awaited between the decision and the return, and the terminal
    event needs at least two event-loop iterations to be committed, so a
    reply queued synchronously right after ``await runner.cancel(…)`` reaches
    the canceller before the terminal event.
    """

    run_id: str
    thread_id: str
    status: RunStatus
    epoch: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a (sub-)run ended, and the data of its terminal event."""

    status: RunStatus
    event_type: str
    data: dict[str, Any]
    final_response: str = ""
    error: str = ""


@dataclass(eq=False)
class RunState:
    """The live state of one run or sub-run.

    Attributes:
        record: The run as stored when it was created.
        parent: The delegating run, for a sub-run.
        task: The task executing the run's agent (a sub-run started with a
            plain ``await ctx.delegate`` shares its parent's task; one started
            with ``gather`` or ``create_task`` has its own).
        cancel_reason: Set once, when the run (or an ancestor) is cancelled
            or times out; the reason of its ``agent_cancelled``.
        cancelled_alone: The cancel named this sub-run itself, not its
            parent: the parent goes on (``SubRunCancelled``).
        started: Loop time at which execution began (0 until then).
        closing: The run is winding up: no new sub-runs may start.
        ending: The run's terminal event was submitted: nothing may follow
            it and a cancel has nothing left to do.
        terminal_committed: The terminal event is committed (set by the
            runner's commit listener, before anyone can see the event).
        children: Sub-runs that are still running.
        creating: Sub-runs whose rows are being written (they join
            ``children`` the moment the write completes).
        done: Set when the run is over (terminal event written or given up).
    """

    record: RunRecord
    parent: RunState | None = None
    task: asyncio.Task[Any] | None = None
    cancel_reason: str | None = None
    cancelled_alone: bool = False
    started: float = 0.0
    closing: bool = False
    ending: bool = False
    terminal_committed: bool = False
    children: set[RunState] = field(default_factory=set)
    creating: set[asyncio.Future[Any]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.record.run_id

    @property
    def is_sub(self) -> bool:
        """Whether this is a sub-run."""
        return self.parent is not None

    def ancestor_cancelled(self) -> bool:
        """Whether any run above this one is being cancelled."""
        parent = self.parent
        while parent is not None:
            if parent.cancel_reason is not None:
                return True
            parent = parent.parent
        return False


def request_cancel(state: RunState, reason: str, *, alone: bool = False) -> bool:
    """Mark ``state`` and its subtree cancelled and cancel their tasks, once each.

    The reason is recorded before any task is cancelled: the run acts on it
    whenever the cancellation reaches it, even inside a step that finishes
    first. Sub-runs get ``parent run ended: <reason>``. ``alone`` says the
    cancel named this sub-run itself (its parent goes on). Returns whether
    the cancel takes effect (the run had not been cancelled or begun ending
    already).
    """
    if state.ending or state.cancel_reason is not None:
        return False
    tasks: list[asyncio.Task[Any]] = []

    def mark(run: RunState, why: str) -> None:
        if run.ending or run.cancel_reason is not None:
            return
        run.cancel_reason = why
        task = run.task
        # A task cancelled before its first step would never run its
        # coroutine (and so never write a terminal event): until the run has
        # begun, the reason alone is enough — it is checked there.
        if run.started and task is not None and not task.done() and task not in tasks:
            tasks.append(task)
        for child in list(run.children):
            mark(child, f"{PARENT_ENDED}: {reason}")

    mark(state, reason)
    state.cancelled_alone = alone
    for task in tasks:
        task.cancel()
    return True


class UserLocks:
    """One admission lock per user, created on demand and dropped when unused.

    Admission decisions (limits, ``on_active``, idempotency keys) are per
    user and per thread, and a thread belongs to one user, so a per-user lock
    is all they need: one user's slow start (a few fsyncs) or a log outage
    never makes another user's start or cancel wait.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        """Hold ``user_id``'s lock for the block."""
        entry = self._locks.get(user_id)
        if entry is None:
            entry = self._locks[user_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[user_id]
