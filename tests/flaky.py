"""An event log that fails on command, for degradation and recovery tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from agentcast.errors import LogUnavailable
from agentcast.log.base import EventDraft, Follower, StoredEvent, StreamInfo
from agentcast.log.memory import MemoryLog


class FlakyLog:
    """Delegates to a :class:`MemoryLog`; each ``fail_*`` flag breaks one path."""

    name = "flaky"
    durability = "memory"

    def __init__(self, inner: MemoryLog | None = None) -> None:
        self.inner = inner or MemoryLog()
        self.fail_append = False
        self.fail_follow = False
        self.open_delay = 0.0
        self.open_calls = 0
        self.append_calls = 0

    async def open(self) -> None:
        self.open_calls += 1
        if self.open_delay:
            await asyncio.sleep(self.open_delay)
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        self.append_calls += 1
        if self.fail_append:
            raise LogUnavailable("disk on fire (injected)")
        return await self.inner.append(drafts)

    async def read(
        self, thread_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        return await self.inner.read(thread_id, after_seq, limit)

    async def info(self, thread_id: str) -> StreamInfo:
        return await self.inner.info(thread_id)

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> Follower:
        if self.fail_follow:
            raise LogUnavailable("live path broken (injected)")
        return await self.inner.follow(thread_id, after_seq, epoch)

    async def trim(self, thread_id: str, before_seq: int) -> int:
        return await self.inner.trim(thread_id, before_seq)

    def add_commit_listener(self, listener: Callable[[Sequence[StoredEvent]], None]) -> None:
        self.inner.add_commit_listener(listener)

    async def settle(self) -> None:
        await self.inner.settle()
