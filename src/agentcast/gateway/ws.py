"""The WebSocket endpoint: ``/v1/ws``, docs/protocol.md, "WebSocket".

One :class:`WsConnection` per socket, made of watched tasks:

* the **reader** (the handler's own loop) parses frames with the sans-I/O
  :mod:`agentcast.protocol`, applies the inbound limits (size → 1009, token
  bucket → ``rate_limited``) and runs commands one at a time, so a reply is
  queued before anything the command causes (all of it in
  :class:`~agentcast.gateway.ws_commands.WsCommands`, mixed into
  :class:`WsConnection`);
* one **writer** drains the connection's byte-bounded
  :class:`~agentcast.gateway.subscription.Outbox` onto the socket — the only
  code that sends;
* one :class:`~agentcast.gateway.subscription.Subscription` task per thread,
  moving events from the log to the outbox (nothing writes to a socket except
  a subscription reading the log);
* one :class:`~agentcast.gateway.subscription.TerminalForward` task per run
  this connection cancelled in a thread it does not follow, bringing it that
  run's terminal event after ``cancel_accepted``;
* an expiry timer that closes with 4401 when the token's ``exp`` passes.

A user already holding ``max_connections_per_user`` connections (WebSocket and
SSE together, :mod:`agentcast.gateway.user_connections`) is accepted and then
closed with 4029; the slot a connection holds is given back however it ends.

Invariants kept here: authentication before ``accept`` and a per-user check
on every thread and run, answered ``not_found`` exactly like a made-up id (4);
closing a socket never stops a run (5); bounded queues, frames and rates, and
a slow consumer closed with 4008 without slowing anyone else (6); at shutdown
:meth:`WsConnection.drain` then :meth:`WsConnection.close` with 1001 (9).

This module holds the handshake and the connection's life: starting its
tasks, watching them, draining and closing. What a client's frames make happen
is :mod:`agentcast.gateway.ws_commands`.

A refused handshake is answered ``401`` with the reason when the server
supports the ASGI WebSocket denial response (uvicorn does), else closed before
``accept`` — which the server turns into ``403``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any, Final

from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from .. import __version__
from ..errors import ERRORS, CloseCode, ErrorCode
from ..protocol import ConnectionEstablished, TokenBucket
from .auth import AuthError, Principal
from .context import Gateway
from .subscription import Outbox, Subscription, TerminalForward
from .ws_commands import _INTERNAL_MESSAGE, WsCommands, _now

__all__ = ["CLOSE_TIMEOUT_S", "WebSocketHandler", "WsConnection"]

logger = logging.getLogger(__name__)

#: How long a close may wait for the socket to take the close frame (a client
#: that stopped reading never does); after it the connection is dropped.
CLOSE_TIMEOUT_S: Final = 10.0
#: The setting that bounds open connections per user (the ``limit`` of its refusals).
_CONNECTIONS_LIMIT: Final = "max_connections_per_user"


class WebSocketHandler:
    """The ``/v1/ws`` endpoint of one gateway.

    Usable as a Starlette route endpoint (Starlette calls an object that is
    not a function as an ASGI app: ``handler(scope, receive, send)``) or
    called with a ready :class:`~starlette.websockets.WebSocket`.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(
        self, websocket: WebSocket | Scope, receive: Receive | None = None, send: Send | None = None
    ) -> None:
        """Authenticate, accept, serve the connection until it ends."""
        if not isinstance(websocket, WebSocket):
            if receive is None or send is None:
                raise TypeError("call with a WebSocket, or as an ASGI app (scope, receive, send)")
            websocket = WebSocket(websocket, receive, send)
        try:
            principal, subprotocol = await self.gateway.auth.authenticate_websocket(websocket)
        except AuthError as exc:
            await _refuse(websocket, exc)
            return
        slot = self.gateway.user_connections.acquire(principal.user_id)
        try:
            await websocket.accept(subprotocol=subprotocol)
            if slot is None:
                await self._too_many(websocket)
                return
            batch = websocket.query_params.get("batch", "").lower() in ("1", "true", "yes")
            conn = WsConnection(self.gateway, websocket, principal, batch=batch)
            await conn.serve()
        finally:
            if slot is not None:
                slot.release()

    async def _too_many(self, websocket: WebSocket) -> None:
        """Close a connection over ``max_connections_per_user`` with 4029 and why.

        Accepted first, so that the client sees the close code (a refused
        handshake is only a status), and reconnects later with its backoff.
        """
        self.gateway.metrics.refused(_CONNECTIONS_LIMIT)
        limit = self.gateway.user_connections.limit
        reason = f"too many connections: {_CONNECTIONS_LIMIT} is {limit}"
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
            await websocket.close(code=CloseCode.TOO_MANY_CONNECTIONS, reason=reason)


async def _refuse(websocket: WebSocket, exc: AuthError) -> None:
    """Refuse a handshake: 401 with the reason if possible, else a close (→ 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            PlainTextResponse(exc.reason, status_code=exc.status_code)
        )
    else:
        await websocket.close(code=_close_code(ErrorCode.UNAUTHORIZED), reason=exc.reason[:120])


class WsConnection(WsCommands):
    """One accepted WebSocket of one user (the gateway's :class:`Connection`).

    Args:
        gateway: The gateway it belongs to (engine, settings, connection set).
        websocket: The accepted socket.
        principal: Who is connected, and until when.
        batch: Send events as JSON array frames (``?batch=1``).
    """

    transport: Final = "websocket"

    def __init__(
        self, gateway: Gateway, websocket: WebSocket, principal: Principal, *, batch: bool
    ) -> None:
        self.gateway = gateway
        self.websocket = websocket
        self.principal = principal
        self.user_id = principal.user_id
        self.connection_id = f"ws_{secrets.token_hex(8)}"
        settings = gateway.settings
        self._engine = gateway.engine
        self._max_frame = settings.ws_max_frame_bytes
        self._batch_size = max(1, settings.catchup_batch)
        self._outbox = Outbox(settings.ws_send_queue_bytes, batch=batch)
        self._bucket = TokenBucket(settings.ws_rate_per_s, settings.ws_rate_burst, _now())
        self._limited = 0
        self._subs: dict[str, Subscription] = {}
        self._forwards: dict[str, TerminalForward] = {}  # by run id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._closing = False  # no new work: a close started or the client left
        self._close_started = False
        self._closed = asyncio.Event()  # set once the connection is fully over
        #: The close code this side sent, if any (tests, logs).
        self.close_code: int | None = None

    # Public methods

    async def serve(self) -> None:
        """Run the connection until the client leaves or the server closes it."""
        self.gateway.connections.add(self)
        try:
            self._spawn(self._write_loop(), "writer")
            if self.principal.expires_at is not None:
                self._spawn(self._expire(self.principal.expires_at), "expiry")
            self._reply(
                ConnectionEstablished(
                    connection_id=self.connection_id,
                    user_id=self.user_id,
                    server_version=__version__,
                )
            )
            if self.gateway.closing:
                self.fail(_close_code(ErrorCode.UNAVAILABLE), "server shutting down")
            self._reader = asyncio.current_task()
            await self._read_loop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._close_started or task is None:
                raise  # not our own close giving up on a stuck socket
            task.uncancel()
        finally:
            self.gateway.connections.discard(self)
            self._closing = True
            await self._stop_tasks()
            self._closed.set()

    async def drain(self, timeout: float) -> None:
        """Wait until every subscription has sent the log's current head, and the queue is empty.

        The heads are taken when drain is called (shutdown: after the runner
        appended the last terminal events). Gives up quietly after ``timeout``;
        the client resumes from the log anyway.
        """
        bridge = self._engine.bridge
        try:
            async with asyncio.timeout(timeout):
                heads = {t: (await bridge.info(t)).last_seq for t in list(self._subs)}
                while True:
                    self._outbox.clear_progress()
                    if self._closing or self._drained(heads):
                        return
                    await self._outbox.wait_progress()
        except TimeoutError:
            logger.info("connection %s not drained within %.1fs", self.connection_id, timeout)

    async def close(self, code: int, reason: str) -> None:
        """Stop sending, close the socket with ``code`` (at most :data:`CLOSE_TIMEOUT_S`)."""
        if self._close_started or self._closing:
            await self._closed.wait()
            return
        self._close_started = self._closing = True
        self.close_code = code
        try:
            await self._stop_tasks(keep_reader=True)
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.websocket.close(code=code, reason=reason)
            except TimeoutError:
                # The client stopped reading: the close frame cannot be sent.
                # Stop serving it; the server drops the transport when we return.
                logger.info("connection %s: close %d timed out", self.connection_id, code)
                self._drop()
            except (WebSocketDisconnect, WebSocketDisconnected):
                pass  # the client left first: nothing to close
        except asyncio.CancelledError:
            # Whoever waited gave up first (shutdown's deadline): drop it all the same.
            self._drop()
            raise
        finally:
            self._closed.set()

    def fail(self, code: int, reason: str) -> None:
        """Close with ``code`` from code that must not wait (a callback, a subscription)."""
        if self._closing or self._close_task is not None:
            return
        logger.info("closing connection %s: %d %s", self.connection_id, code, reason)
        self._close_task = self._spawn(self.close(code, reason), "close")

    # Private methods: writing, timers, tasks

    async def _write_loop(self) -> None:
        """The only sender: one frame at a time, bytes released when the socket took them."""
        bridge = self._engine.bridge
        while True:
            frame = await self._outbox.next_frame()
            try:
                # send() directly: one coroutine less per frame than send_text().
                await self.websocket.send({"type": "websocket.send", "text": frame.data.decode()})
            except (WebSocketDisconnect, WebSocketDisconnected):
                return  # the client left; the reader sees the disconnect
            self._outbox.done(frame)
            if frame.events:
                bridge.observe_delivery(frame.events)

    def _drop(self) -> None:
        """Stop serving a socket that cannot be closed cleanly (the server drops it)."""
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()

    async def _expire(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        self.fail(_close_code(ErrorCode.UNAUTHORIZED), "token expired")

    def _drained(self, heads: dict[str, int]) -> bool:
        for thread_id, head in heads.items():
            sub = self._subs.get(thread_id)
            running = sub is not None and sub.task is not None and not sub.task.done()
            if running and sub is not None and sub.sent_seq < head:
                return False
        if not all(forward.done for forward in self._forwards.values()):
            return False  # a cancelled run's terminal event is still to be forwarded
        return self._outbox.empty

    @property
    def queued_peak_bytes(self) -> int:
        """The most bytes this connection ever held queued (bounded by the send queue)."""
        return self._outbox.peak_bytes

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self.connection_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Watched tasks: a task that dies is logged and closes the connection (1011)."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error(
                "connection %s: task %s died", self.connection_id, task.get_name(), exc_info=exc
            )
            self.fail(_close_code(ErrorCode.INTERNAL), _INTERNAL_MESSAGE)

    async def _stop_tasks(self, *, keep_reader: bool = False) -> None:
        """Cancel subscriptions, the writer and timers; close followers. Runs keep running."""
        current = asyncio.current_task()
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            await sub.stop()
        forwards = list(self._forwards.values())
        self._forwards.clear()
        for forward in forwards:
            await forward.stop()
        tasks = [t for t in self._tasks if t is not current and t is not self._close_task]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        close_task = self._close_task
        if not keep_reader and close_task is not None and close_task is not current:
            await asyncio.wait([close_task])


def _close_code(code: ErrorCode) -> CloseCode:
    """The close code of an error that ends the connection, read from ``ERRORS``.

    Raises:
        LookupError: the code's row has no close code (a bug: only errors with
            one end a connection).
    """
    close_code = ERRORS[code].close_code
    if close_code is None:
        raise LookupError(f"error code {code} has no close code")
    return close_code
