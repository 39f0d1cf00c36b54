"""The story rules of a thread, and agents that try hard to break them.

A thread's story is whole when: seqs are contiguous from 1 with no duplicate;
every run and sub-run has ``agent_started`` first and exactly one terminal
event last; every ``tool_executing`` is followed by its ``tool_completed``; a
parent ends after its sub-runs; no text is sent twice (the agents here say
numbered tokens ``t0 t1 …``, so a run's text must be exactly ``t0 … tN``);
and each run's stored status agrees with its terminal event.

The agents are driven by a seed carried in their message, so a failing run
is reproduced from the seed the test prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from agentcast.agents import (
    AgentRegistry,
    RunContext,
    SubRunCancelled,
    SubRunFailed,
    ToolError,
    builtin_registry,
    tool,
)
from agentcast.engine import Engine
from agentcast.errors import AppendRejected, LogUnavailable
from agentcast.events import TERMINAL_TYPES, Event
from agentcast.log.base import EventDraft, StoredEvent
from agentcast.store.base import TERMINAL_STATUS
from tests.invariants import assert_contiguous, assert_run_lifecycles, decode_all
from tests.utils import MS

__all__ = ["FaultyLog", "check_story", "story_registry"]

_TOKEN = re.compile(r"t(\d+) ")


# --- tools and agents ---------------------------------------------------------------


@tool
async def fast(x: int) -> int:
    """Answer at once."""
    return x * 2


@tool
async def slow(ms: int) -> str:
    """Take a while."""
    await asyncio.sleep(ms * MS)
    return f"slept {ms} ms"


@tool
def blocking(ms: int) -> str:
    """A sync tool: runs in a worker thread."""
    time.sleep(ms / 1000)
    return "done"


@tool
async def broken(x: int) -> int:
    """Always fails."""
    raise ValueError(f"broken tool got {x}")


async def _steps(ctx: RunContext, rng: random.Random, steps: int, said: list[int]) -> None:
    """Think, stream numbered tokens, call tools — in a seeded order.

    ``said`` holds the run's token count, so the run's tokens go on counting
    across calls.
    """
    for step in range(steps):
        roll = rng.random()
        if roll < 0.25:
            await ctx.think(f"step {step}")
        elif roll < 0.55:
            for _ in range(rng.randint(1, 4)):
                await ctx.say(f"t{said[0]} ")
                said[0] += 1
                await asyncio.sleep(rng.uniform(0, 8) * MS)
        else:
            name = rng.choice(["fast", "slow", "blocking", "broken"])
            args = {"ms": rng.randint(5, 60)} if name in ("slow", "blocking") else {"x": step}
            with contextlib.suppress(ToolError):
                await ctx.call_tool(name, **args)


async def worker(ctx: RunContext) -> str:
    """Steps, and sometimes a failure of its own."""
    rng = random.Random(ctx.message)
    await _steps(ctx, rng, rng.randint(1, 6), [0])
    if rng.random() < 0.1:
        raise RuntimeError("the worker gave up")
    return "worked"


async def boss(ctx: RunContext) -> str:
    """Delegates sequentially, concurrently, or leaves a sub-run behind."""
    rng = random.Random(ctx.message)
    said = [0]
    await _steps(ctx, rng, rng.randint(0, 3), said)
    mode = rng.choice(["alone", "sequential", "gather", "orphan", "fail"])
    if mode == "sequential":
        try:
            await ctx.delegate("worker", f"{ctx.message}/a")
        except (SubRunFailed, SubRunCancelled):
            await ctx.think("the sub-run did not finish; going on")
        await ctx.delegate("worker", f"{ctx.message}/b")
    elif mode == "gather":
        await asyncio.gather(
            ctx.delegate("worker", f"{ctx.message}/a"), ctx.delegate("worker", f"{ctx.message}/b")
        )
    elif mode == "orphan":
        # Started and never awaited: the runner must end it before the parent.
        orphan = asyncio.create_task(ctx.delegate("worker", f"{ctx.message}/orphan"))
        orphan.add_done_callback(lambda t: t.cancelled() or t.exception())
        await _steps(ctx, rng, rng.randint(0, 2), said)
    elif mode == "fail":
        raise RuntimeError("the boss gave up")
    await _steps(ctx, rng, rng.randint(0, 2), said)
    return f"boss {mode}"


def story_registry() -> AgentRegistry:
    """The built-in agents plus the story agents and their tools."""
    registry = builtin_registry()
    for spec in (fast, slow, blocking, broken):
        registry.add_tool(spec)
    registry.register(worker, name="worker", description="steps, tools, text")
    registry.register(boss, name="boss", description="delegates in every way")
    return registry


# --- the rules ---------------------------------------------------------------------


async def check_story(engine: Engine, user: str, thread_id: str) -> list[Event]:
    """Assert every story rule on a thread; return its events."""
    events = decode_all(await engine.bridge.read(thread_id, 0, 1_000_000))
    try:
        assert_contiguous(events)
        by_run = assert_run_lifecycles(events)
    except (AssertionError, KeyError) as exc:
        raise AssertionError(f"{exc!r}\n{dump(events)}") from None
    text: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event.type == "text_delta":
            text[event.run_id].append(event.data["delta"])
    for run_id, parts in text.items():
        said = "".join(parts)
        numbers = [int(n) for n in _TOKEN.findall(said)]
        assert _TOKEN.sub("", said) == "", f"{run_id}: unexpected text {said!r}"
        assert numbers == list(range(len(numbers))), (
            f"{run_id}: text sent twice or out of order: {said!r}"
        )
    for run_id, run_events in by_run.items():
        record = await engine.store.get_run(user, run_id)
        terminal = run_events[-1]
        assert terminal.type in TERMINAL_TYPES
        assert record.status is TERMINAL_STATUS[terminal.type], (
            f"{run_id}: stored {record.status}, terminal {terminal.type}"
        )
    return events


def dump(events: Sequence[Event]) -> str:
    """A thread's story, one line per event (for failure messages)."""
    lines = []
    for e in events:
        detail = (
            e.data.get("reason") or e.data.get("error_type") or e.data.get("tool_call_id") or ""
        )
        detail = f"{detail} {e.data.get('status', '')} {e.data.get('error', '')}"
        lines.append(
            f"{e.seq:4} {e.run_id[-6:]} <{(e.parent_run_id or '-')[-6:]}> {e.type} {detail}"
        )
    return "\n".join(lines)


# --- faults ------------------------------------------------------------------------


class FaultyLog:
    """Wraps a real log and breaks its appends on a seeded schedule.

    * ``transient``: an append fails with ``LogUnavailable`` before reaching
      the log (at most ``max_in_a_row`` in a row, so the bridge recovers);
    * ``stall_s``: an append is committed, then its answer is held past the
      bridge's ``append_timeout_s`` — the bridge retries an append that in
      fact committed, and must store it once;
    * ``reject``: one event of a run (never ``agent_started`` or
      ``agent_error``, whose refusal leaves nothing to fall back on) is
      refused for good with ``AppendRejected``; a batch holding it is
      refused whole, as a database rolls it back.

    Everything else is delegated to the wrapped log.
    """

    def __init__(
        self,
        inner: Any,
        rng: random.Random,
        *,
        transient: float = 0.0,
        stall: float = 0.0,
        stall_s: float = 0.0,
        reject: float = 0.0,
        max_in_a_row: int = 2,
    ) -> None:
        self.inner = inner
        self.rng = rng
        self.transient = transient
        self.stall = stall
        self.stall_s = stall_s
        self.reject = reject
        self.max_in_a_row = max_in_a_row
        self._in_a_row = 0
        self._rejected_runs: set[str] = set()
        self._doomed: set[str] = set()
        self.injected: dict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        for draft in drafts:
            if draft.event_id in self._doomed:
                self.injected["rejected"] += 1
                raise AppendRejected(f"event {draft.event_id} refused (injected)")
        for draft in drafts:
            if (
                draft.fresh  # a retried event may be stored already: a log would return it
                and draft.type not in ("agent_started", "agent_error")
                and not draft.thread_id.startswith("__")
                and draft.run_id not in self._rejected_runs
                and self.rng.random() < self.reject
            ):
                self._rejected_runs.add(draft.run_id)
                self._doomed.add(draft.event_id)
                self.injected["rejected"] += 1
                raise AppendRejected(f"event {draft.event_id} refused (injected)")
        if self._in_a_row < self.max_in_a_row and self.rng.random() < self.transient:
            self._in_a_row += 1
            self.injected["transient"] += 1
            raise LogUnavailable("the disk went away (injected)")
        self._in_a_row = 0
        stored: list[StoredEvent] = await self.inner.append(drafts)
        if self.rng.random() < self.stall:
            self.injected["stalled"] += 1
            await asyncio.sleep(self.stall_s)
        return stored
