"""Shared test helpers: one time unit and deadline-based waiting.

All timing in tests derives from :data:`MS` so that a slow machine can be
given more room in one place, and nothing waits with a bare sleep when it can
wait for a condition instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MS = 0.001


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    interval: float = 5 * MS,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true, failing after ``within`` seconds."""
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
