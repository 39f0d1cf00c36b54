"""Emits that are never cut in half by a cancellation.

Once an event is submitted to the bridge it is committed whatever happens to
the caller. A caller cancelled while it waits would believe the event was not
written, and then break a run's story: a ``tool_executing`` without its
``tool_completed``, a ``text_delta`` sent again. So the emits that a story
rule depends on are awaited to their end, and a cancellation that arrived
meanwhile is raised only afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["whole"]

T = TypeVar("T")


async def whole(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end; re-raise a cancellation that came meanwhile.

    Further cancellations are absorbed while it runs; once it is done, its
    exception (if any) is raised, else ``CancelledError`` if the caller was
    cancelled, else its result is returned.
    """
    inner = asyncio.ensure_future(awaitable)
    cancelled = False
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            cancelled = True
    result = inner.result()
    if cancelled:
        raise asyncio.CancelledError
    return result
