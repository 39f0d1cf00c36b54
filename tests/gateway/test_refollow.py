"""The shared re-follow rule of the WebSocket and SSE transports (gateway/refollow.py)."""

from __future__ import annotations

import asyncio

import pytest

from agentcast.gateway.refollow import (
    FOLLOWER_ENDINGS,
    follows_again,
    refollow,
    replace_follower,
)
from agentcast.log.base import Follower
from agentcast.log.follower import FollowerClosed, HistoryLost
from agentcast.types import new_thread_id
from tests.conftest import EngineFactory


def test_lost_history_follows_again_and_a_closed_follower_stops() -> None:
    assert follows_again(HistoryLost("t", 1, 5))
    assert not follows_again(FollowerClosed("closed"))
    assert set(FOLLOWER_ENDINGS) == {HistoryLost, FollowerClosed}


async def test_refollow_after_trim_restarts_where_history_begins(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    thread_id = new_thread_id()
    for i in range(6):
        await engine.bridge.emit(
            thread_id=thread_id, run_id="run_a", event_type="custom", data={"name": "n", "value": i}
        )
    old = await engine.bridge.follow(thread_id, 1)
    assert old.start.recovered
    await engine.log.trim(thread_id, 4)  # seqs 2 and 3 are gone before ``old`` read them
    with pytest.raises(HistoryLost) as lost:
        await old.next_batch(10)
    assert follows_again(lost.value)

    new = await replace_follower(engine.bridge, thread_id, old)
    try:
        # Not a silent gap: the start says the position was not honoured and
        # where delivery really restarts (just before the first retained event).
        assert not new.start.recovered
        assert new.start.epoch == old.start.epoch
        assert new.start.after_seq == 3
        assert [ev.seq for ev in await new.next_batch(10)] == [4, 5, 6]
        with pytest.raises(FollowerClosed):
            await old.next_batch(10)  # the old follower was closed
    finally:
        await new.aclose()


async def test_refollow_with_an_intact_position_is_recovered(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    thread_id = new_thread_id()
    for i in range(3):
        await engine.bridge.emit(
            thread_id=thread_id, run_id="run_a", event_type="custom", data={"name": "n", "value": i}
        )
    info = await engine.bridge.info(thread_id)
    follower = await refollow(engine.bridge, thread_id, info.epoch, 2)
    try:
        assert follower.start.recovered
        assert follower.start.after_seq == 2
        assert [ev.seq for ev in await follower.next_batch(10)] == [3]
    finally:
        await follower.aclose()


class _CancelledClose:
    """A follower whose close is cancelled (its owner is being torn down meanwhile)."""

    def __init__(self, real: Follower) -> None:
        self._real = real

    @property
    def start(self) -> object:
        return self._real.start

    @property
    def cursor(self) -> int:
        return self._real.cursor

    async def aclose(self) -> None:
        await self._real.aclose()
        raise asyncio.CancelledError


async def test_replace_follower_does_not_leak_the_new_one_when_cancelled(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    thread_id = new_thread_id()
    await engine.bridge.emit(
        thread_id=thread_id, run_id="run_a", event_type="custom", data={"name": "n", "value": 0}
    )
    opened: list[Follower] = []

    class Recording:
        async def follow(
            self, thread_id: str, after_seq: int = 0, epoch: str | None = None
        ) -> Follower:
            follower = await engine.bridge.follow(thread_id, after_seq, epoch)
            opened.append(follower)
            return follower

    old = _CancelledClose(await engine.bridge.follow(thread_id, 0))
    with pytest.raises(asyncio.CancelledError):
        await replace_follower(Recording(), thread_id, old)  # type: ignore[arg-type]
    assert len(opened) == 1
    with pytest.raises(FollowerClosed):
        await opened[0].next_batch(10)
