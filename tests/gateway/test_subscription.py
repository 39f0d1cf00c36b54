"""TerminalForward on its own: only the run's terminal event, and a clean hand-over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agentcast.engine import Engine
from agentcast.gateway.subscription import Outbox, TerminalForward
from agentcast.log.base import FollowStart, StoredEvent
from agentcast.types import new_thread_id
from tests.conftest import EngineFactory
from tests.utils import seconds

RUN = "run_parent"
SUB = "run_child"


async def cancelled_run_with_a_sub_run(engine: Engine) -> str:
    """A thread where run ``RUN`` and its sub-run ``SUB`` were cancelled: seqs 1..4."""
    thread_id = new_thread_id()
    emits: list[tuple[str, str | None, str, dict[str, Any]]] = [
        (RUN, None, "agent_started", {"message": "go"}),
        (SUB, RUN, "agent_started", {"message": "help"}),
        (SUB, RUN, "agent_cancelled", {"reason": "cancelled by user", "duration_ms": 1.0}),
        (RUN, None, "agent_cancelled", {"reason": "cancelled by user", "duration_ms": 2.0}),
    ]
    for run_id, parent, kind, data in emits:
        await engine.bridge.emit(
            thread_id=thread_id, run_id=run_id, parent_run_id=parent, event_type=kind, data=data
        )
    return thread_id


class StuckFollower:
    """A follower that never yields an event (its task has not read anything yet)."""

    def __init__(self, epoch: str) -> None:
        self.start = FollowStart(epoch, 0, True)
        self.cursor = 0
        self.closed = False

    async def next_batch(self, max_events: int = 256) -> list[StoredEvent]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True


def queued_seqs(outbox: Outbox) -> list[int]:
    return [e.event.seq for e in outbox._entries if e.event is not None]


async def test_forwards_only_the_runs_own_terminal_event(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    thread_id = await cancelled_run_with_a_sub_run(engine)
    outbox = Outbox(1 << 20, batch=False)
    failures: list[tuple[int, str]] = []
    forward = TerminalForward(
        RUN,
        thread_id,
        await engine.bridge.follow(thread_id, 0),
        outbox=outbox,
        bridge=engine.bridge,
        batch_size=1,
        fail=lambda code, reason: failures.append((code, reason)),
    )
    await asyncio.wait_for(forward.run(), seconds(5))
    assert forward.done
    assert queued_seqs(outbox) == [4]  # not the sub-run's agent_cancelled (seq 3)
    assert failures == []


async def test_settle_queues_a_terminal_event_the_subscription_starts_after(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    thread_id = await cancelled_run_with_a_sub_run(engine)
    epoch = (await engine.bridge.info(thread_id)).epoch
    for upto, expected in [(4, [4]), (3, []), (9, [4])]:
        outbox = Outbox(1 << 20, batch=False)
        follower = StuckFollower(epoch)
        forward = TerminalForward(
            RUN,
            thread_id,
            follower,
            outbox=outbox,
            bridge=engine.bridge,
            batch_size=2,
            fail=lambda code, reason: None,
        )
        forward.task = asyncio.create_task(forward.run())
        await forward.settle(upto)
        # At or before the subscription's start: queued here, before its reply.
        # After it: the subscription's to deliver, so not queued twice.
        assert queued_seqs(outbox) == expected, upto
        assert forward.done
        assert forward.task.cancelled()
        assert follower.closed
