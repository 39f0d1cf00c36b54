"""The seeded agent of the story test (tests/gateway/test_story_ws.py).

Loaded by the live server through ``GatewaySettings.agents``
(``tests.gateway.story_agents:registry``). One agent, ``story``, whose
message ``"SEED:DEPTH:HANG"`` drives everything it does from
``random.Random(SEED)``: thinking steps, fast, slow, sync and failing tool
calls, streamed text, sequential and concurrent delegation to itself
(``DEPTH`` + 1, at most :data:`MAX_DEPTH`), and — with ``HANG`` set — waiting
(itself, or in a sub-run) until the run's timeout ends it.

Text is checkable: a run says the numbered tokens ``"t0 " "t1 " …`` in
order, each once, and a run that completes returns ``"N tokens"``, N being
how many it said. So the concatenated ``text_delta`` deltas of any run are
:func:`tokens` of some N, and of exactly N for a completed run.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Final

from agentcast.agents import (
    AgentRegistry,
    RunContext,
    SubRunCancelled,
    SubRunFailed,
    ToolError,
    tool,
)
from tests.utils import MS, seconds

__all__ = ["AGENT", "MAX_DEPTH", "completed_response", "message", "registry", "tokens"]

AGENT: Final = "story"
MAX_DEPTH: Final = 2
#: What a hanging run waits for: far beyond any run timeout the test sets.
HANG_S: Final = 30.0

_STEPS: Final = ("think", "say", "fast", "slow", "sync", "fail", "delegate", "gather")
_WEIGHTS: Final = (2, 4, 2, 2, 2, 1, 1, 1)


def message(seed: int, depth: int = 0, hang: bool = False) -> str:
    """The message that makes ``story`` play the script of ``seed``."""
    return f"{seed}:{depth}:{int(hang)}"


def tokens(count: int) -> str:
    """The text of a run that said ``count`` tokens."""
    return "".join(f"t{i} " for i in range(count))


def completed_response(count: int) -> str:
    """The final response of a completed run that said ``count`` tokens."""
    return f"{count} tokens"


@tool
async def fast_tool(x: int) -> int:
    """Adds one, without waiting."""
    return x + 1


@tool
async def slow_tool(ms: float) -> float:
    """Waits ``ms`` (scaled) milliseconds."""
    await asyncio.sleep(ms * MS)
    return ms


@tool
def sync_tool(ms: float) -> str:
    """A plain ``def`` tool: blocks its worker thread for ``ms`` (scaled) milliseconds."""
    time.sleep(ms * MS)
    return f"slept {ms:g} ms"


@tool
async def failing_tool(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"failing on purpose: {reason}")


class _Story:
    """One run's script: everything it does comes from its seed."""

    def __init__(self, ctx: RunContext) -> None:
        seed, depth, hang = (int(part) for part in ctx.message.split(":"))
        self.ctx = ctx
        self.seed = seed
        self.depth = depth
        self.hang = bool(hang)
        self.rng = random.Random(seed)
        self.said = 0

    async def run(self) -> str:
        rng = self.rng
        steps = rng.randint(1, 4 if self.depth == 0 else 3)
        for _ in range(steps):
            (step,) = rng.choices(_STEPS, _WEIGHTS)
            if step in ("delegate", "gather") and self.depth >= MAX_DEPTH:
                step = "say"
            await getattr(self, f"_{step}")()
        if self.hang:
            await self._say()
            if self.depth < MAX_DEPTH and rng.random() < 0.4:
                # The sub-run hangs: the parent's timeout must reach it first.
                await self.ctx.delegate(AGENT, message(self._sub_seed(), self.depth + 1, True))
            else:
                await self.ctx.think("waiting for the run timeout")
                await asyncio.sleep(seconds(HANG_S))
        if rng.random() < 0.05:
            raise RuntimeError("the story ends badly")
        return completed_response(self.said)

    def _sub_seed(self) -> int:
        return self.rng.getrandbits(32)

    async def _think(self) -> None:
        await self.ctx.think(f"step of {self.seed} at depth {self.depth}")

    async def _say(self) -> None:
        for _ in range(self.rng.randint(1, 6)):
            await self.ctx.say(f"t{self.said} ")
            self.said += 1
            if self.rng.random() < 0.5:
                await asyncio.sleep(self.rng.uniform(0, 8) * MS)

    async def _fast(self) -> None:
        await self.ctx.call_tool("fast_tool", x=self.said)

    async def _slow(self) -> None:
        await self.ctx.call_tool("slow_tool", ms=round(self.rng.uniform(50, 200), 1))

    async def _sync(self) -> None:
        await self.ctx.call_tool("sync_tool", ms=round(self.rng.uniform(2, 30), 1))

    async def _fail(self) -> None:
        recover = self.rng.random() < 0.7
        try:
            await self.ctx.call_tool("failing_tool", reason=f"{self.seed}")
        except ToolError:
            if not recover:
                raise

    async def _delegate(self) -> None:
        recover = self.rng.random() < 0.6
        try:
            await self.ctx.delegate(AGENT, message(self._sub_seed(), self.depth + 1))
        except (SubRunFailed, SubRunCancelled):
            if not recover:
                raise

    async def _gather(self) -> None:
        first, second = self._sub_seed(), self._sub_seed()
        return_exceptions = self.rng.random() < 0.5
        recover = self.rng.random() < 0.6
        try:
            await asyncio.gather(
                self.ctx.delegate(AGENT, message(first, self.depth + 1)),
                self.ctx.delegate(AGENT, message(second, self.depth + 1)),
                return_exceptions=return_exceptions,
            )
        except (SubRunFailed, SubRunCancelled):
            # The other sub-run may still be running: the runner ends it
            # (parent run ended) before this run's terminal event.
            if not recover:
                raise


async def story(ctx: RunContext) -> str:
    """Plays the seeded script of its message ``"SEED:DEPTH:HANG"``."""
    return await _Story(ctx).run()


registry = AgentRegistry()
registry.register(story, name=AGENT, tools=[fast_tool, slow_tool, sync_tool, failing_tool])
