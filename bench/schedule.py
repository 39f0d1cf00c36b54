"""The open-loop schedule shared by the bench agent, the baseline server and the load generator.

Slot ``i`` of a run is due at the absolute wall-clock time ``t0 + i * interval``
and the event emitted for it carries that time, so latency is measured from
when the event *should* have been produced (no coordinated omission). This
module imports nothing from agentcast, so the baseline server stays minimal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Final

__all__ = ["AGENT_NAME", "BIG_TOOL_NAME", "Schedule"]

#: The name runs are started with (``start_agent {"agent": "bench"}``).
AGENT_NAME: Final = "bench"
#: The tool a big slot calls; its results carry the payload.
BIG_TOOL_NAME: Final = "bench_blob"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When each event of one run is due; the run's message, as JSON.

    Attributes:
        t0: Wall-clock time (``time.time()``) at which slot 0 is due.
        count: Number of slots.
        interval: Seconds between two slots of this run.
        big_every: Every ``big_every``-th slot is a tool call with a big result
            (``0``: never).
        big_bytes: Size of the big result's payload.
    """

    t0: float
    count: int
    interval: float
    big_every: int = 0
    big_bytes: int = 64 * 1024

    # Public methods

    def due(self, i: int) -> float:
        """The wall-clock time slot ``i`` is due."""
        return self.t0 + i * self.interval

    def is_big(self, i: int) -> bool:
        """Whether slot ``i`` is a big tool call (two events) rather than one ``custom`` event."""
        return self.big_every > 0 and i % self.big_every == self.big_every - 1

    def big_slots(self) -> int:
        """How many slots are big."""
        return 0 if self.big_every <= 0 else self.count // self.big_every

    def last_seq(self) -> int:
        """The seq of the run's terminal event in a fresh thread.

        ``agent_started``, one event per small slot, two per big slot, then
        ``agent_completed``: the load generator expects exactly ``1..last_seq``.
        """
        return 2 + self.count + self.big_slots()

    async def slots(self) -> AsyncIterator[tuple[int, float]]:
        """Yield ``(i, due)`` for every slot, each once its due time has come.

        Wall-clock due times are mapped onto the loop's monotonic clock once:
        sleeping to absolute deadlines means a slow emit never shifts later slots.
        """
        loop = asyncio.get_running_loop()
        wall_minus_loop = time.time() - loop.time()
        for i in range(self.count):
            due = self.due(i)
            delay = due - wall_minus_loop - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield i, due

    def end(self) -> float:
        """When the last slot is due."""
        return self.due(max(0, self.count - 1))

    def encode(self) -> str:
        """The run message."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, message: str) -> Schedule:
        """Parse a run message.

        Raises:
            ValueError: not a schedule (the run then ends with ``agent_error``).
        """
        try:
            raw = json.loads(message)
            return cls(
                t0=float(raw["t0"]),
                count=int(raw["count"]),
                interval=float(raw["interval"]),
                big_every=int(raw.get("big_every", 0)),
                big_bytes=int(raw.get("big_bytes", 64 * 1024)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bench: not a schedule: {message[:80]!r} ({exc})") from None
