"""Shared test helpers: one time scale and deadline-based waiting.

Every wall-clock bound in the tests derives from :data:`SCALE`
(``AGENTCAST_TEST_TIME_SCALE``, default 1) through :data:`MS` or
:func:`seconds`, so a starved machine (``make test-starved`` runs at scale 4)
gets more room in one place. Ordering never rests on a sleep: tests hold a
gate (a commit, an emit, a tool) open, act, then release it; only bounds on
how long something may take are times.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: How much slower than a quiet developer machine this one is allowed to be.
SCALE = float(os.environ.get("AGENTCAST_TEST_TIME_SCALE", "1") or "1")
if SCALE <= 0:
    raise ValueError("AGENTCAST_TEST_TIME_SCALE must be > 0")

#: One millisecond, scaled.
MS = 0.001 * SCALE


def seconds(value: float) -> float:
    """``value`` seconds on a quiet machine, scaled for this one."""
    return value * SCALE


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float | None = None,
    interval: float = 5 * MS,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true, failing after ``within`` (scaled) seconds."""
    within = seconds(5.0) if within is None else within
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(interval)


async def within(seconds: float, awaitable: Awaitable[Any], what: str) -> Any:
    """Await with a deadline that names what did not happen."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:g}s waiting for {what}") from None
