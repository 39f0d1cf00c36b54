"""``GET /v1/threads/{thread_id}/stream``: a thread's events as Server-Sent Events.

The wire (docs/protocol.md): first ``event: subscribed`` (no ``id``) with
``{"thread_id", "epoch", "after_seq", "recovered"}``, then one SSE message per
event — ``id: <seq>``, ``event: <type>``, ``data: <envelope>`` — in seq order,
catch-up then live, and a ``: keepalive`` comment whenever nothing was sent
for ``sse_keepalive_s``.

Resuming: ``Last-Event-ID`` (what ``EventSource`` sends when it reconnects)
wins over ``?after_seq=``; ``?epoch=`` says which history the position refers
to; a position that is not an integer in ``[0, 2**63 - 1]`` is answered 400
``invalid_message``. The position is resolved by the log (``bridge.follow`` → ``follower.start``,
docs/event-log.md "Positions and resume"): when it cannot be honoured ``recovered`` is
false and delivery restarts from the first retained event — never a silent
gap (docs/architecture.md invariant 2). Should events be trimmed while this stream lags
behind, it follows again from its cursor and sends a new ``subscribed``.

The stream is a plain ASGI response that reads the follower and, at the same
time, listens for ``http.disconnect``: a client that goes away ends the
follower at once, not at the next write. It is registered in
``gateway.connections`` so shutdown drains it and then ends it; it also ends
when the token it was opened with expires. It holds one of its user's
``max_connections_per_user`` slots (shared with WebSockets) from before the
stream starts until it ends; a request over the cap is answered 429
``limit_exceeded`` with ``limit: "max_connections_per_user"``. Backpressure is TCP's: the
follower reads the log only as fast as the client takes the bytes, so a slow
client holds a cursor, not a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ..errors import LimitExceeded, Unavailable
from ..log.base import Follower, FollowStart, StoredEvent
from .auth import Principal
from .http import query_int, require_thread
from .problems import BadRequest, api_endpoint
from .refollow import FOLLOWER_ENDINGS, follows_again, replace_follower
from .user_connections import ConnectionSlot

if TYPE_CHECKING:
    from .context import Gateway

__all__ = ["SSE_PATH", "SSEConnection", "encode_event", "encode_subscribed", "sse_route"]

logger = logging.getLogger(__name__)

SSE_PATH: Final = "/v1/threads/{thread_id}/stream"
_KEEPALIVE: Final = b": keepalive\n\n"
#: The largest seq a position may name: a 64-bit signed integer, what the log stores.
_MAX_SEQ: Final = 2**63 - 1
#: The setting that bounds open connections per user (the ``limit`` of its refusals).
_CONNECTIONS_LIMIT: Final = "max_connections_per_user"
_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


def encode_subscribed(thread_id: str, start: FollowStart) -> bytes:
    """The ``subscribed`` message (no ``id``, so it does not move ``Last-Event-ID``)."""
    data = msgspec.json.encode(
        {
            "thread_id": thread_id,
            "epoch": start.epoch,
            "after_seq": start.after_seq,
            "recovered": start.recovered,
        }
    )
    return b"event: subscribed\ndata: " + data + b"\n\n"


def encode_event(event: StoredEvent) -> bytes:
    """One event as an SSE message; the envelope is compact JSON, so one ``data:`` line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.raw)


class SSEConnection:
    """One open SSE stream: an ASGI response and a :class:`~.context.Connection`.

    Args:
        gateway: The gateway (bridge, settings, connection set).
        principal: Who opened it (its ``expires_at`` ends the stream).
        thread_id: The thread followed (already checked to be the caller's).
        follower: The follower, already started at the resolved position.
        slot: The user's connection slot it holds, given back when the stream ends.
    """

    transport: Final = "sse"

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        thread_id: str,
        follower: Follower,
        *,
        slot: ConnectionSlot | None = None,
    ) -> None:
        self.gateway = gateway
        self._slot = slot
        self.user_id = principal.user_id
        self.thread_id = thread_id
        self._principal = principal
        self._follower = follower
        self._sent_seq = follower.start.after_seq
        self._progress = asyncio.Event()
        self._ended = asyncio.Event()
        self._closing = False

    # Connection protocol

    async def drain(self, timeout: float) -> None:
        """Wait until every event now in the log for this thread was written out."""
        with contextlib.suppress(TimeoutError, Unavailable):
            async with asyncio.timeout(timeout):
                target = (await self.gateway.engine.bridge.info(self.thread_id)).last_seq
                while self._sent_seq < target and not self._ended.is_set():
                    self._progress.clear()
                    waiters = [
                        asyncio.ensure_future(e.wait()) for e in (self._progress, self._ended)
                    ]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waiters:
                            w.cancel()

    async def close(self, code: int, reason: str) -> None:
        """End the response (SSE has no close code; ``EventSource`` reconnects)."""
        self._closing = True
        await self._follower.aclose()

    # ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the client leaves, the gateway closes us, or the token expires."""
        self.gateway.connections.add(self)
        stream = asyncio.create_task(self._stream(send), name=f"sse-{self.thread_id}")
        listen = asyncio.create_task(_wait_disconnect(receive), name="sse-disconnect")
        try:
            await asyncio.wait({stream, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.gateway.connections.discard(self)
            if self._slot is not None:
                self._slot.release()
            self._ended.set()
            await self._follower.aclose()
            for task in (stream, listen):
                task.cancel()
            for task in (stream, listen):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            exc = stream.exception()
            if not isinstance(exc, OSError):  # a client gone mid-write is not an error
                logger.error("SSE stream of %s failed", self.thread_id, exc_info=exc)

    # Private methods

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await self._write(send, encode_subscribed(self.thread_id, self._follower.start))
        await self._pump(send)
        await self._write(send, b"", more=False)

    async def _pump(self, send: Send) -> None:
        """Copy batches from the follower to the client until closed or expired."""
        keepalive = self.gateway.settings.sse_keepalive_s
        batch_size = self.gateway.settings.catchup_batch
        bridge = self.gateway.engine.bridge
        follower = self._follower
        pending: asyncio.Task[list[StoredEvent]] | None = None
        try:
            while not self._closing:
                if pending is None:
                    pending = asyncio.create_task(follower.next_batch(batch_size))
                # The read is never cancelled by a keepalive tick: the same
                # next_batch keeps waiting, so no event can be lost between ticks.
                done, _ = await asyncio.wait({pending}, timeout=self._wait_time(keepalive))
                if self._expired():
                    return
                if not done:
                    await self._write(send, _KEEPALIVE)
                    continue
                task, pending = pending, None
                try:
                    events = task.result()
                except FOLLOWER_ENDINGS as ending:
                    if not follows_again(ending):
                        return
                    follower = await self._refollow(follower)
                    await self._write(send, encode_subscribed(self.thread_id, follower.start))
                    continue
                await self._write(send, b"".join(encode_event(ev) for ev in events))
                self._sent_seq = events[-1].seq
                self._progress.set()
                bridge.observe_delivery(events)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _refollow(self, old: Follower) -> Follower:
        """Events were trimmed under us: follow again (the start says ``recovered: false``).

        The shared rule of :mod:`.refollow`, so SSE and WebSocket clients see
        the same restart position for the same lost history.
        """
        new = await replace_follower(self.gateway.engine.bridge, self.thread_id, old)
        self._follower = new
        return new

    async def _write(self, send: Send, body: bytes, *, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": more})

    def _wait_time(self, keepalive: float) -> float:
        expires = self._principal.expires_at
        if expires is None:
            return keepalive
        return max(0.0, min(keepalive, expires - time.time()))

    def _expired(self) -> bool:
        expires = self._principal.expires_at
        return expires is not None and time.time() >= expires


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def _parse_last_event_id(value: str) -> int:
    """The seq a reconnecting ``EventSource`` resumes after: an integer in ``[0, 2**63 - 1]``.

    Raises:
        BadRequest: anything else (400 ``invalid_message``, like a bad
            ``?after_seq=``), so a position the log cannot hold never reaches it.
    """
    try:
        after_seq = int(value)
    except ValueError:  # also more digits than int() parses
        raise BadRequest("Last-Event-ID must be an integer seq") from None
    if not 0 <= after_seq <= _MAX_SEQ:
        raise BadRequest(f"Last-Event-ID must be between 0 and {_MAX_SEQ}")
    return after_seq


class _StreamResponse(Response):
    """Hands the ASGI call to an :class:`SSEConnection` (the endpoint returns a Response)."""

    def __init__(self, connection: SSEConnection) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self._connection = connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._connection(scope, receive, send)


def sse_route(gateway: Gateway) -> Route:
    """The SSE route bound to ``gateway``."""

    async def stream(request: Request, principal: Principal) -> Response:
        thread = await require_thread(gateway, principal, request.path_params["thread_id"])
        if gateway.closing:
            raise Unavailable("the server is shutting down")
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None and last_event_id.strip():
            after_seq = _parse_last_event_id(last_event_id)
        else:
            after_seq = query_int(request, "after_seq", 0, 0)
        epoch = request.query_params.get("epoch") or None
        slot = gateway.user_connections.acquire(principal.user_id)
        if slot is None:
            gateway.metrics.refused(_CONNECTIONS_LIMIT)
            raise LimitExceeded(
                f"too many connections: {_CONNECTIONS_LIMIT} is {gateway.user_connections.limit}",
                limit=_CONNECTIONS_LIMIT,
            )
        try:
            follower = await gateway.engine.bridge.follow(thread.thread_id, after_seq, epoch)
        except BaseException:
            slot.release()
            raise
        connection = SSEConnection(gateway, principal, thread.thread_id, follower, slot=slot)
        return _StreamResponse(connection)

    return Route(SSE_PATH, api_endpoint(gateway, SSE_PATH, stream), methods=["GET"])
