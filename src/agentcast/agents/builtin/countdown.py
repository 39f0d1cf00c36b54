"""``countdown``: N evenly spaced thinking steps, for tests and benchmarks.

The message is ``"N"`` or ``"N DELAY_MS"``. The run is exactly
``agent_started``, N ``agent_thinking`` events (reasoning ``"N"``, ``"N-1"`` …
``"1"``, progress ``i/N``) and ``agent_completed``. Step ``i`` is due at
``start + i * DELAY_MS`` on the event loop's clock — absolute deadlines, so
time spent emitting does not accumulate and N steps take N * DELAY_MS however
slow each emit is (as long as it is faster than DELAY_MS). That makes the
agent a clean load generator: its event rate is exactly what was asked for.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..context import RunContext
    from ..registry import AgentRegistry

__all__ = [
    "DEFAULT_DELAY_MS",
    "MAX_DELAY_MS",
    "MAX_STEPS",
    "countdown",
    "parse_countdown",
    "register",
]

DEFAULT_DELAY_MS: Final = 100.0
MAX_STEPS: Final = 100_000
MAX_DELAY_MS: Final = 60_000.0


def parse_countdown(message: str) -> tuple[int, float]:
    """``"N"`` or ``"N DELAY_MS"`` → ``(N, delay_ms)``.

    Raises:
        ValueError: anything else, with the expected form in the message.
    """
    usage = (
        f'expected "N" or "N DELAY_MS" (0 <= N <= {MAX_STEPS}, 0 <= DELAY_MS <= {MAX_DELAY_MS:g})'
    )
    parts = message.split()
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"countdown: {usage}, got {message[:40]!r}")
    try:
        steps = int(parts[0])
        delay_ms = float(parts[1]) if len(parts) == 2 else DEFAULT_DELAY_MS
    except ValueError:
        raise ValueError(f"countdown: {usage}, got {message[:40]!r}") from None
    if not 0 <= steps <= MAX_STEPS or not 0 <= delay_ms <= MAX_DELAY_MS:
        raise ValueError(f"countdown: {usage}, got {message[:40]!r}")
    return steps, delay_ms


async def countdown(ctx: RunContext) -> str:
    """Counts down from N, one thinking step every DELAY_MS: message "N" or "N DELAY_MS"."""
    steps, delay_ms = parse_countdown(ctx.message)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(1, steps + 1):
        # Sleep until the absolute deadline of step i: no drift.
        await asyncio.sleep(max(0.0, start + i * delay_ms / 1000 - loop.time()))
        await ctx.think(str(steps - i + 1), progress=i / steps, step=i)
    return f"Liftoff after {steps} steps"


def register(registry: AgentRegistry) -> None:
    """Add ``countdown`` to ``registry``."""
    registry.register(countdown, name="countdown")
