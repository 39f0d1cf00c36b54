"""Steps that are never cut in half by a cancellation.

Once an event is submitted to the bridge it is committed whatever happens to
the caller. A caller cancelled while it waits would believe the event was not
written, and then break a run's story: a ``tool_executing`` without its
``tool_completed``, a ``text_delta`` sent again, a second terminal event. So
the steps a story rule depends on are awaited to their end; what happens to a
cancellation that arrived meanwhile is the caller's choice:

* :func:`whole` raises it afterwards (agent code: the call still ends
  cancelled);
* :func:`finish_anyway` absorbs it (``uncancel``): the runner records a
  cancel's reason on the run before cancelling a task, and acts on the
  reason once the step is done.

Only a cancellation of the step itself (the loop closing) propagates at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["finish_anyway", "whole"]

T = TypeVar("T")


async def _to_the_end(awaitable: Awaitable[T]) -> tuple[asyncio.Future[T], int]:
    """Await ``awaitable`` through every cancellation; return it done and how many came."""
    inner = asyncio.ensure_future(awaitable)
    cancels = 0
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            cancels += 1
    return inner, cancels


async def whole(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end; re-raise a cancellation that came meanwhile.

    Its exception (if any) wins; else ``CancelledError`` if the caller was
    cancelled; else its result.
    """
    inner, cancels = await _to_the_end(awaitable)
    result = inner.result()
    if cancels:
        raise asyncio.CancelledError
    return result


async def finish_anyway(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end, absorbing (``uncancel``) any cancellation meanwhile."""
    inner, cancels = await _to_the_end(awaitable)
    task = asyncio.current_task()
    if task is not None:
        for _ in range(cancels):
            task.uncancel()
    return inner.result()
