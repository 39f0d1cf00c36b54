"""The bridge under the faults that used to stall, duplicate or lie.

* a permanent refusal fails one emit, not the whole line behind it;
* an append that never answers is an outage with a deadline, not a hang;
* ``ensure_integration()`` on a running FAILED bridge starts nothing twice;
* ``close()`` after its drain deadline never fails an event that was committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentcast.bridge import Bridge
from agentcast.errors import AppendRejected, Unavailable
from agentcast.lifecycle import BridgeState
from agentcast.log.base import EventDraft, StoredEvent
from agentcast.log.memory import MemoryLog
from tests.invariants import assert_contiguous, decode_all
from tests.test_bridge import FAST as BRIDGE_FAST
from tests.utils import seconds, wait_until, within

FAST = BRIDGE_FAST.with_(recovery_attempts=1000)


class ScriptedLog(MemoryLog):
    """A memory log whose appends can be refused, held, or answered late."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: set[int] = set()  # values whose event is refused for good
        self.hold = asyncio.Event()
        self.hold.set()
        self.answer_late = asyncio.Event()
        self.answer_late.set()
        self.entered = asyncio.Event()
        self.calls = 0

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        self.calls += 1
        if any(f'"value":{v}}}'.encode() in d.data for d in drafts for v in self.refuse):
            raise AppendRejected("an integrity error (injected)")
        if not drafts[0].thread_id.startswith("__"):
            self.entered.set()
            await self.hold.wait()
        stored = await super().append(drafts)
        if not drafts[0].thread_id.startswith("__"):
            await self.answer_late.wait()  # committed: only the answer waits
        return stored


def emit(bridge: Bridge, value: int, thread: str = "th_1") -> asyncio.Task[StoredEvent]:
    return asyncio.create_task(
        bridge.emit(
            thread_id=thread, run_id="r1", event_type="custom", data={"name": "n", "value": value}
        )
    )


async def test_a_refused_event_fails_alone_and_the_rest_is_appended_in_order() -> None:
    log = ScriptedLog()
    bridge = Bridge(log, FAST)
    await bridge.ensure_integration()
    log.hold.clear()
    first = emit(bridge, 0)
    await within(seconds(5), log.entered.wait(), "the first append")
    tasks = [emit(bridge, i) for i in range(1, 50)]
    await wait_until(lambda: bridge.buffered == 50)  # one held in flight, 49 queued
    log.refuse.add(17)  # one event of the next batch can never be stored
    log.hold.set()
    await first
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[16], AppendRejected)
    stored = [r for r in results if isinstance(r, StoredEvent)]
    assert len(stored) == 48
    events = decode_all([await first, *stored])
    assert_contiguous(events)
    assert [e.data["value"] for e in events] == [v for v in range(50) if v != 17]
    assert bridge.state is BridgeState.ACTIVE  # a refusal is not an outage
    assert bridge.metrics.append_failures._value.get() == 1
    await bridge.close()


async def test_an_append_that_never_answers_is_an_outage_and_is_stored_once() -> None:
    log = ScriptedLog()
    bridge = Bridge(log, FAST.with_(append_timeout_s=seconds(0.05)))
    await bridge.ensure_integration()
    log.answer_late.clear()  # commits, then never answers
    task = emit(bridge, 1)
    await wait_until(lambda: bridge.state is BridgeState.DEGRADED, message="the outage")
    assert not task.done()
    log.answer_late.set()
    stored = await within(seconds(5), task, "the retried emit")
    assert [(e.seq, e.event_id) for e in await log.read("th_1")] == [(1, stored.event_id)]
    await wait_until(lambda: bridge.state is BridgeState.ACTIVE, message="recovery")
    await bridge.close()


async def test_ensure_integration_on_a_running_failed_bridge_starts_nothing_twice() -> None:
    log = ScriptedLog()
    bridge = Bridge(log, FAST.with_(recovery_attempts=2, append_timeout_s=seconds(0.02)))
    await bridge.ensure_integration()
    follower = await bridge.follow("th_1", 0)
    log.answer_late.clear()
    task = emit(bridge, 1)
    await wait_until(lambda: bridge.state is BridgeState.FAILED, message="FAILED")
    with pytest.raises(Unavailable, match="failed"):
        await bridge.ensure_integration()
    appenders = [t for t in asyncio.all_tasks() if t.get_name() == "agentcast-appender"]
    assert len(appenders) == 1
    log.answer_late.set()
    stored = await within(seconds(5), task, "the emit after recovery")
    batch = await within(seconds(5), follower.next_batch(), "the follower")  # never cut off
    assert [e.event_id for e in batch] == [stored.event_id]
    await wait_until(lambda: bridge.state is BridgeState.ACTIVE, message="recovery")
    await follower.aclose()
    await bridge.close()


async def test_close_after_its_drain_deadline_never_fails_a_committed_event() -> None:
    log = ScriptedLog()
    bridge = Bridge(log, FAST.with_(append_timeout_s=seconds(5)))
    await bridge.ensure_integration()
    log.answer_late.clear()  # committed, answer held past the drain deadline
    task = emit(bridge, 1)
    await wait_until(lambda: bool(log._streams), message="the commit")
    closing = asyncio.create_task(bridge.close(drain_timeout=0.01))
    await asyncio.sleep(0)
    log.answer_late.set()
    await within(seconds(10), closing, "close")
    stored = await task  # the event is durable: its emit succeeds
    assert stored.seq == 1


@pytest.mark.parametrize("error", [KeyError("a projector bug"), AppendRejected("refused")])
async def test_a_permanent_error_of_a_lone_event_is_raised_to_its_emitter(
    error: Exception,
) -> None:
    class Broken(MemoryLog):
        async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
            if not drafts[0].thread_id.startswith("__"):
                raise error
            return await super().append(drafts)

    bridge = Bridge(Broken(), FAST)
    await bridge.ensure_integration()
    with pytest.raises(type(error) if isinstance(error, AppendRejected) else AppendRejected):
        await emit(bridge, 1)
    assert bridge.state is BridgeState.ACTIVE
    await bridge.close()
