"""``GET /v1/threads/{thread_id}/events``: a thread's stored events, one bounded page at a time.

A page is bounded twice: by ``limit`` events and by ``http_events_page_bytes``
of response body, so a thread of large events cannot make one request build a
response of hundreds of megabytes. A page always holds at least one event
(when there is one after ``after_seq``), even if that event alone is larger
than the budget: otherwise a client could never get past it.

The cursor (``next_after_seq``): the seq of the page's last event when the
stream held events after it at the time of the read (the page was cut by
``limit`` or by bytes), and ``null`` when the page reached the stream's head as
it was read (the ``last_seq`` of the stream info taken before the events were
read), including an empty page. Passing it back as ``after_seq`` yields the
next page with no gap and no duplicate; a ``null`` cursor does not mean that
no event will ever follow — a live thread grows — only that this read saw all.

The events are read in steps sized from what the page can still hold, so a
page of large events never holds more than a step of them in memory beyond
the budget; their stored envelope bytes are spliced into the body unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..log.base import StoredEvent
from .auth import Principal
from .http import DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT, query_int, require_thread

if TYPE_CHECKING:
    from .context import Gateway

__all__ = ["FIRST_STEP", "page_body", "thread_events"]

#: Events asked of the log by the first read of a page; later reads are sized
#: from the room left and the largest event seen so far.
FIRST_STEP: Final = 32
#: Room kept for ``,"next_after_seq":`` and the largest seq (19 digits) or ``null``.
_CURSOR_ROOM: Final = len(b',"next_after_seq":') + 20


async def thread_events(gateway: Gateway, request: Request, principal: Principal) -> Response:
    """Up to ``limit`` events with ``seq > after_seq``, at most ``http_events_page_bytes``.

    Body: ``{"thread_id", "epoch", "events": [...], "next_after_seq"}`` (see the
    module docstring for the cursor). A first event whose seq is not
    ``after_seq + 1`` means the history before it was trimmed by retention.
    """
    thread = await require_thread(gateway, principal, request.path_params["thread_id"])
    after_seq = query_int(request, "after_seq", 0, 0)
    limit = query_int(request, "limit", DEFAULT_EVENTS_LIMIT, 1, MAX_EVENTS_LIMIT)
    bridge = gateway.engine.bridge
    info = await bridge.info(thread.thread_id)
    budget = gateway.settings.http_events_page_bytes
    enc = msgspec.json.encode
    head = b'{"thread_id":' + enc(thread.thread_id) + b',"epoch":' + enc(info.epoch)
    room = budget - len(head) - len(b',"events":[]}') - _CURSOR_ROOM

    events: list[StoredEvent] = []
    cursor = after_seq
    step = min(limit, FIRST_STEP)
    largest = 1
    full = False
    while not full and len(events) < limit:
        batch = await bridge.read(thread.thread_id, cursor, step)
        for ev in batch:
            cost = len(ev.raw) + (1 if events else 0)  # the comma before it
            if events and cost > room:
                full = True
                break
            events.append(ev)
            room -= cost
            largest = max(largest, len(ev.raw))
            if len(events) == limit:
                break
        if len(batch) < step:
            break  # the head, as of this read
        cursor = events[-1].seq
        step = max(1, min(limit - len(events), room // largest + 1))

    last = events[-1].seq if events else None
    more = last is not None and last < info.last_seq
    return Response(page_body(head, events, last if more else None), media_type="application/json")


def page_body(head: bytes, events: list[StoredEvent], next_after_seq: int | None) -> bytes:
    """The response body: ``head`` (thread id and epoch), the envelopes, the cursor."""
    return b"".join(
        (
            head,
            b',"events":[',
            b",".join(ev.raw for ev in events),
            b'],"next_after_seq":',
            msgspec.json.encode(next_after_seq),
            b"}",
        )
    )
