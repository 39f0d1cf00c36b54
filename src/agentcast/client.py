"""The async Python client: typed events, exactly once, across reconnects.

::

    async with AgentcastClient("ws://127.0.0.1:8000/v1/ws", token) as client:
        run = await client.start("echo", "hello")
        async for item in client.events():
            if isinstance(item, Resync):
                ...  # history was lost: drop what you hold for item.thread_id
                continue
            print(item.seq, item.type, item.data)
            if item.is_terminal and item.run_id == run.run_id:
                break

How exactly-once holds: the client remembers, per thread, the epoch and the
last ``seq`` it handed to its caller. When the connection drops (anything but
4401 and an explicit :meth:`AgentcastClient.close`) it reconnects with
exponential backoff and full jitter and re-subscribes every thread from that
position; an event with ``seq`` at or below the position is dropped. When the
server answers ``recovered: false`` (epoch changed, history trimmed) the
caller gets a :class:`Resync` item in :meth:`AgentcastClient.events` before the
thread's events restart: never a silent gap.

Requests (``start``, ``subscribe`` …) carry an ``id`` and wait for the reply
with that ``ref``; an ``error`` reply raises :class:`ClientError` with the
wire code. A request in flight when the connection drops raises
:class:`ClientError` ``disconnected`` (its outcome is unknown: retry ``start``
with an ``idempotency_key`` to be safe).

Nothing is skipped silently, and additions by a later server are tolerated
(:func:`decode_server_frame`): an event with envelope fields this version does
not know decodes normally, one of a type it does not know (or whose envelope
does not decode) arrives as a :class:`GenericEvent` and moves the position
like any other. A frame that cannot be read at all — not JSON, or an event
without ``seq``/``thread_id`` — could hide an event, so it ends
:meth:`AgentcastClient.events` with :class:`ClientError` ``bad_frame``.

The decoding lives in :mod:`agentcast.client_decode`; :class:`GenericEvent` and
:func:`decode_server_frame` are re-exported here, where callers import them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from .client_decode import GenericEvent, decode_server_frame
from .errors import ClientError
from .events import Event
from .protocol import (
    NO_RECONNECT_CLOSE_CODES,
    Cancel,
    CancelAccepted,
    Command,
    ConnectionEstablished,
    ErrorFrame,
    Ping,
    Pong,
    RunAccepted,
    ServerFrame,
    StartAgent,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode_command,
)

__all__ = ["AgentcastClient", "ClientError", "GenericEvent", "Resync", "decode_server_frame"]

logger = logging.getLogger(__name__)

#: Items buffered for :meth:`AgentcastClient.events` before reading the socket
#: pauses (the server then sees a slow consumer, closes 4008, and the client
#: resumes from the log: memory stays bounded on both sides).
DEFAULT_MAX_BUFFER: Final = 10_000


_F = TypeVar("_F", RunAccepted, Subscribed, Unsubscribed, CancelAccepted, Pong)


@dataclass(frozen=True, slots=True)
class Resync:
    """Delivery of ``thread_id`` restarts after ``after_seq`` in ``epoch``.

    Sent instead of a silent gap when the server could not resume from the
    client's position (``recovered: false``): anything the caller built from
    the thread's earlier events may be stale.
    """

    thread_id: str
    epoch: str
    after_seq: int


@dataclass(slots=True)
class _Position:
    epoch: str | None
    last_seq: int  # the last seq handed to the caller


@dataclass(frozen=True, slots=True)
class _End:
    error: ClientError | None


class AgentcastClient:
    """A WebSocket connection to agentcast that survives disconnects.

    Args:
        url: The endpoint, e.g. ``ws://127.0.0.1:8000/v1/ws``.
        token: A JWT, sent as ``Authorization: Bearer``.
        batch: Ask for array frames (``?batch=1``); fewer frames under load.
        reconnect: Reconnect and resume by itself (not after 4401).
        backoff_base: First reconnect delay ceiling, seconds (doubles per attempt).
        backoff_max: Largest reconnect delay ceiling, seconds.
        request_timeout: How long a request waits for its reply (and for a
            connection, while reconnecting).
        max_buffer: Items buffered for :meth:`events` before reading pauses.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch: bool = True,
        reconnect: bool = True,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        request_timeout: float = 30.0,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if batch:
            url += ("&" if "?" in url else "?") + "batch=1"
        self.url = url
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        #: The server's id for the current connection (after ``connection_established``).
        self.connection_id: str | None = None
        #: How many times the client reconnected.
        self.reconnects = 0
        self._token = token
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._positions: dict[str, _Position] = {}
        self._pending: dict[int, asyncio.Future[ServerFrame]] = {}
        self._ids = itertools.count(1)
        self._items: asyncio.Queue[Event | Resync | _End] = asyncio.Queue(max_buffer)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Why the client stopped for good (``unauthorized``, ``bad_frame`` …), if it did.
        self._stopped: ClientError | None = None
        self._rng = random.Random()

    # Public methods

    async def connect(self) -> None:
        """Open the connection (once); later drops are handled by the client.

        Raises:
            ClientError: ``unauthorized`` when the credentials are refused.
            OSError: the server cannot be reached.
        """
        if self._task is not None:
            return
        ws = await self._open()
        self._task = asyncio.create_task(self._supervise(ws), name="agentcast-client")
        self._task.add_done_callback(self._task_done)

    async def close(self) -> None:
        """Close the connection and end :meth:`events`."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if self._ws is not None:
            await self._ws.close()
        self._fail_pending(ClientError("closed", "the client was closed"))
        self._end(None)

    async def __aenter__(self) -> AgentcastClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(
        self,
        agent: str,
        message: str,
        thread_id: str | None = None,
        on_active: str = "reject",
        idempotency_key: str | None = None,
    ) -> RunAccepted:
        """Start a run; its events arrive through :meth:`events` (the thread is subscribed)."""
        command = StartAgent(
            agent=agent,
            message=message,
            thread_id=thread_id,
            on_active=on_active,  # type: ignore[arg-type]
            idempotency_key=idempotency_key,
        )
        return await self._request(command, RunAccepted)

    async def subscribe(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> Subscribed:
        """Follow a thread from ``(epoch, after_seq)``; events go to :meth:`events`."""
        self._positions[thread_id] = _Position(epoch, after_seq)
        return await self._request(
            Subscribe(thread_id=thread_id, after_seq=after_seq, epoch=epoch), Subscribed
        )

    async def unsubscribe(self, thread_id: str) -> None:
        """Stop following a thread (its later events are dropped at once)."""
        self._positions.pop(thread_id, None)
        await self._request(Unsubscribe(thread_id=thread_id), Unsubscribed)

    async def cancel(
        self, run_id: str | None = None, thread_id: str | None = None
    ) -> CancelAccepted:
        """Cancel a run, or the active run of a thread."""
        return await self._request(Cancel(run_id=run_id, thread_id=thread_id), CancelAccepted)

    async def ping(self) -> None:
        """A round trip through the server's command path."""
        await self._request(Ping(), Pong)

    async def events(self) -> AsyncIterator[Event | Resync]:
        """Every event of every subscribed thread, once, in seq order per thread.

        Events this version cannot type are :class:`GenericEvent` items in
        their place. Ends after :meth:`close`; raises :class:`ClientError` when
        the client gives up (``unauthorized``, a drop with ``reconnect=False``,
        or ``bad_frame``: a frame that cannot be read, which might have held
        an event).
        """
        while True:
            item = await self._items.get()
            if isinstance(item, _End):
                self._items.put_nowait(item)  # every later call ends too
                if item.error is not None:
                    raise item.error
                return
            yield item

    def position(self, thread_id: str) -> tuple[str | None, int] | None:
        """The ``(epoch, last delivered seq)`` of a subscribed thread."""
        pos = self._positions.get(thread_id)
        return None if pos is None else (pos.epoch, pos.last_seq)

    # Private methods: connection

    async def _open(self) -> ClientConnection:
        try:
            return await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                max_size=None,
                max_queue=64,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise ClientError("unauthorized", f"handshake refused ({status})") from exc
            raise

    async def _supervise(self, ws: ClientConnection) -> None:
        """Read; when the connection drops, reconnect with backoff and resubscribe."""
        attempt = 0
        while True:
            self._ws = ws
            self._connected.set()
            bad = await self._read(ws)
            self._connected.clear()
            if bad is not None:
                # Going on would skip whatever the frame held: stop, loudly.
                logger.error("agentcast: %s", bad.message)
                self._fail_pending(bad)
                self._end(bad)
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.close(code=1002, reason="bad frame")
                return
            self._fail_pending(ClientError("disconnected", "the connection dropped"))
            code = ws.close_code
            if self._closing:
                return
            if code in NO_RECONNECT_CLOSE_CODES:
                self._end(ClientError("unauthorized", f"closed {code}: {ws.close_reason}"))
                return
            if not self.reconnect:
                self._end(ClientError("disconnected", f"closed {code}: {ws.close_reason}"))
                return
            logger.info("agentcast connection closed (%s); reconnecting", code)
            while True:
                ceiling = min(self.backoff_max, self.backoff_base * 2.0**attempt)
                attempt += 1
                await asyncio.sleep(self._rng.uniform(0, ceiling))  # full jitter
                try:
                    ws = await self._open()
                except ClientError as exc:
                    self._end(exc)
                    return
                except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                    logger.info("agentcast reconnect failed: %s", exc)
                    continue
                break
            self.reconnects += 1
            attempt = 0
            await self._resubscribe(ws)

    async def _resubscribe(self, ws: ClientConnection) -> None:
        """Ask for every thread again from the last seq handed to the caller.

        Fire and forget: the reader applies each ``subscribed`` reply to the
        thread's position before any event that follows it.
        """
        for thread_id, pos in list(self._positions.items()):
            command = Subscribe(thread_id=thread_id, after_seq=pos.last_seq, epoch=pos.epoch)
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(encode_command(command))

    async def _read(self, ws: ClientConnection) -> ClientError | None:
        """Deliver frames until the connection ends; return the error of an unreadable frame."""
        try:
            async for data in ws:
                try:
                    frame = decode_server_frame(data)
                except ClientError as exc:
                    return exc
                if isinstance(frame, list):
                    for event in frame:
                        await self._deliver(event)
                else:
                    await self._control(frame)
        except websockets.ConnectionClosed:
            pass  # the supervisor decides what a close means
        return None

    async def _deliver(self, event: Event) -> None:
        pos = self._positions.get(event.thread_id)
        if pos is None or event.seq <= pos.last_seq:
            return  # unsubscribed, or already handed to the caller (exactly once)
        pos.last_seq = event.seq
        await self._items.put(event)

    async def _control(self, frame: ServerFrame) -> None:
        if isinstance(frame, ConnectionEstablished):
            self.connection_id = frame.connection_id
            return
        if isinstance(frame, Subscribed):
            # Applied here, in frame order, so the events after it are judged
            # against the position the server actually resumed from.
            self._positions[frame.thread_id] = _Position(frame.epoch, frame.after_seq)
            if not frame.recovered:
                await self._items.put(Resync(frame.thread_id, frame.epoch, frame.after_seq))
        elif isinstance(frame, RunAccepted) and frame.thread_id not in self._positions:
            self._positions[frame.thread_id] = _Position(frame.epoch, frame.after_seq)
        ref = frame.ref
        future = self._pending.get(ref) if isinstance(ref, int) else None
        if future is not None and not future.done():
            future.set_result(frame)
        elif isinstance(frame, ErrorFrame):
            logger.warning("agentcast error %s: %s", frame.code, frame.message)

    # Private methods: requests

    async def _request(self, command: Command, expected: type[_F]) -> _F:
        if self._stopped is not None:  # the client gave up: no connection will come back
            raise ClientError(self._stopped.code, self._stopped.message)
        if self._task is None or self._closing:
            raise ClientError("closed", "not connected: call connect() first")
        request_id = next(self._ids)
        command = msgspec.structs.replace(command, id=request_id)
        future: asyncio.Future[ServerFrame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._connected.wait()
                assert self._ws is not None
                try:
                    await self._ws.send(encode_command(command))
                except websockets.ConnectionClosed as exc:
                    raise ClientError("disconnected", "the connection dropped") from exc
                reply = await future
        except TimeoutError:
            message = f"no reply to {command.TYPE} within {self.request_timeout:g}s"
            raise ClientError("timeout", message) from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, ErrorFrame):
            raise ClientError(reply.code, reply.message)
        if not isinstance(reply, expected):
            raise ClientError("internal", f"unexpected reply {type(reply).__name__}")
        return reply

    def _fail_pending(self, error: ClientError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _end(self, error: ClientError | None) -> None:
        """End :meth:`events`; make room if the buffer is full (the end matters most)."""
        if error is not None and self._stopped is None:
            self._stopped = error
        if self._items.full():
            self._items.get_nowait()
        self._items.put_nowait(_End(error))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """The supervisor is watched: if it dies, :meth:`events` raises instead of hanging."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("agentcast client task died", exc_info=exc)
            self._fail_pending(ClientError("internal", f"client task died: {exc!r}"))
            self._end(ClientError("internal", f"client task died: {exc!r}"))
