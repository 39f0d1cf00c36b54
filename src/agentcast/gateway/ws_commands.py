"""The reader half of a ``/v1/ws`` connection: inbound limits, parsing, commands.

:class:`WsCommands` is mixed into :class:`~agentcast.gateway.ws.WsConnection`,
which owns the rest of the connection (handshake, writer, timers, watched
tasks, close) and sets every attribute declared here. This module is what a
client's frames can make happen, kept apart from how the connection lives and
ends:

* the inbound limits: a frame over ``ws_max_frame_bytes`` closes with 1009, a
  frame over the token bucket is answered ``rate_limited`` (only every
  :data:`_RATE_REPLY_EVERY`-th of a run of them, so a flood cannot become a
  flood of error frames);
* one command at a time, to its reply: the reply is queued before anything the
  command causes (``run_accepted`` before the run's first event,
  ``cancel_accepted`` before its terminal event);
* the per-user check on every thread and run, done by the runner and the store
  and answered ``not_found`` exactly like a made-up id (invariant 4);
* the connection's subscriptions (one per followed thread, at most
  ``max_subscriptions_per_connection``: one more is refused ``limit_exceeded``
  and the others go on) and terminal forwards (one per run it cancelled in a
  thread it does not follow);
* every ``error`` frame's code is a row of ``ERRORS``, and an unexpected
  failure is logged, never described.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import msgspec
from starlette.websockets import WebSocket

from ..engine import Engine
from ..errors import (
    ERRORS,
    AgentcastError,
    CloseCode,
    ErrorCode,
    InternalError,
    InvalidInput,
    LimitExceeded,
    RateLimited,
)
from ..protocol import (
    Cancel,
    CancelAccepted,
    Command,
    ErrorFrame,
    Ping,
    Pong,
    ProtocolError,
    Ref,
    RunAccepted,
    ServerFrame,
    StartAgent,
    Subscribe,
    Subscribed,
    TokenBucket,
    Unsubscribe,
    Unsubscribed,
    UserMessage,
    encode_frame,
    extract_ref,
    frame_too_large,
    parse_client_frame,
)
from ..runner import CancelResult, RunTicket
from ..store.base import RunStatus
from .context import Gateway
from .problems import client_message
from .subscription import Outbox, Subscription, TerminalForward

__all__ = ["WsCommands"]

#: The endpoint's logger: everything of ``/v1/ws`` logs under one name.
logger = logging.getLogger("agentcast.gateway.ws")

#: Consecutive rate-limited frames after which only every Nth gets a reply,
#: so a flood cannot turn into a flood of error frames.
_RATE_REPLY_EVERY: Final = 16
#: The message of every ``internal`` error frame and 1011 close: nothing is revealed.
_INTERNAL_MESSAGE: Final = "internal error"
#: A cancel with one of these statuses takes effect: the run's terminal event is still to come.
_CANCELLING: Final = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
#: The setting that bounds the threads one connection follows.
_SUBSCRIPTIONS_LIMIT: Final = "max_subscriptions_per_connection"


class WsCommands:
    """Reading frames and running commands, for :class:`~agentcast.gateway.ws.WsConnection`.

    Set by the connection (its ``__init__``): every attribute declared below.
    Provided by it: :meth:`fail` and :meth:`_spawn`.
    """

    gateway: Gateway
    websocket: WebSocket
    user_id: str
    connection_id: str
    _engine: Engine
    _max_frame: int
    _batch_size: int
    _outbox: Outbox
    _bucket: TokenBucket
    _limited: int
    _subs: dict[str, Subscription]
    _forwards: dict[str, TerminalForward]
    _closing: bool
    #: Close with a code from code that must not wait.
    fail: Callable[[int, str], None]
    #: Start a watched task of the connection.
    _spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]

    async def _read_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self._closing:
                continue  # closing: the peer's last frames are not acted on
            text: str | None = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            await self._on_frame(data)

    async def _on_frame(self, data: str | bytes) -> None:
        if frame_too_large(data, self._max_frame):
            self.fail(CloseCode.MESSAGE_TOO_BIG, f"frame over {self._max_frame} bytes")
            return
        if not self._bucket.take(_now()):
            self._limited += 1
            if self._limited % _RATE_REPLY_EVERY == 1:
                message = f"more than {self._bucket.rate:g} frames/s; slow down"
                self._error(RateLimited(message), _peek_ref(data))
            return
        self._limited = 0
        if isinstance(data, bytes):
            ref = _peek_ref(data)
            self._error(InvalidInput("binary frames are not accepted"), ref)
            return
        try:
            command = parse_client_frame(data)
        except ProtocolError as exc:
            self._error(exc, exc.ref)
            return
        try:
            await self._dispatch(command)
        except AgentcastError as exc:
            self._error(exc, command.id)
        except Exception:
            # Invariant: never leak a traceback; the log has it.
            logger.exception("connection %s: %s failed", self.connection_id, command.TYPE)
            self._error(InternalError(), command.id)

    async def _dispatch(self, command: Command) -> None:
        runner = self._engine.runner
        ref = command.id
        if isinstance(command, StartAgent):
            self._check_room(command.thread_id)
            ticket = await runner.start_run(
                self.user_id,
                command.agent,
                command.message,
                command.thread_id,
                command.on_active,
                command.idempotency_key,
            )
            await self._accepted(ticket, ref)
        elif isinstance(command, UserMessage):
            self._check_room(command.thread_id)
            agent = self.gateway.settings.default_agent
            if command.thread_id is not None:
                thread = await self._engine.store.get_thread(self.user_id, command.thread_id)
                agent = thread.last_agent or agent
            ticket = await runner.start_run(
                self.user_id, agent, command.message, command.thread_id, command.on_active
            )
            await self._accepted(ticket, ref)
        elif isinstance(command, Subscribe):
            await self._engine.store.check_thread(self.user_id, command.thread_id)
            self._check_room(command.thread_id)
            sub = await self._follow(command.thread_id, command.after_seq, command.epoch)
            start = sub.follower.start
            self._reply(
                Subscribed(
                    thread_id=command.thread_id,
                    epoch=start.epoch,
                    after_seq=start.after_seq,
                    recovered=start.recovered,
                    ref=ref,
                )
            )
            self._start(sub)
        elif isinstance(command, Unsubscribe):
            # Answered the same whether or not it was subscribed (or exists).
            old = self._subs.pop(command.thread_id, None)
            if old is not None:
                await old.stop()
            self._reply(Unsubscribed(thread_id=command.thread_id, ref=ref))
        elif isinstance(command, Cancel):
            result = await runner.cancel(self.user_id, command.run_id, command.thread_id)
            # Queued with nothing awaited since the runner decided, so it goes
            # out before the run's terminal event (which is not committed yet).
            self._reply(CancelAccepted(run_id=result.run_id, status=str(result.status), ref=ref))
            if result.status in _CANCELLING:
                await self._forward_terminal(result)
        elif isinstance(command, Ping):
            self._reply(Pong(ref=ref))
        else:  # pragma: no cover - the parser only returns the types above
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unhandled {command.TYPE}", ref)

    def _check_room(self, thread_id: str | None) -> None:
        """Refuse what would follow one more thread than ``max_subscriptions_per_connection``.

        Following a thread already followed replaces its subscription and
        takes no more room. A start in a thread not followed (or a new one)
        would subscribe to it, so it is refused before any run starts rather
        than accepted and left unfollowed.

        Raises:
            LimitExceeded: the connection already follows as many threads as allowed.
        """
        if thread_id is not None and thread_id in self._subs:
            return
        limit = self.gateway.settings.max_subscriptions_per_connection
        if len(self._subs) >= limit:
            self.gateway.metrics.refused(_SUBSCRIPTIONS_LIMIT)
            raise LimitExceeded(
                f"this connection already follows {limit} threads; unsubscribe from one first",
                limit=_SUBSCRIPTIONS_LIMIT,
            )

    async def _accepted(self, ticket: RunTicket, ref: Ref | None) -> None:
        """Reply ``run_accepted`` (before any event of the run), then subscribe.

        The reply is queued before anything awaits, so it precedes every event
        of the run whether an existing subscription or a new one carries them.
        An existing subscription to the thread is kept (no duplicates).
        """
        self._reply(
            RunAccepted(
                run_id=ticket.run_id,
                thread_id=ticket.thread_id,
                epoch=ticket.epoch,
                after_seq=ticket.after_seq,
                ref=ref,
            )
        )
        if ticket.thread_id not in self._subs and not self._closing:
            self._start(await self._follow(ticket.thread_id, ticket.after_seq, ticket.epoch))

    async def _forward_terminal(self, result: CancelResult) -> None:
        """After ``cancel_accepted``: make sure the run's terminal event follows it.

        A subscription to the thread carries it. Without one, a
        :class:`TerminalForward` follows the thread from the position the
        cancel returned (before that event) and forwards only it; one per run,
        however often it is cancelled.
        """
        if result.thread_id in self._subs or result.run_id in self._forwards or self._closing:
            return
        follower = await self._engine.bridge.follow(
            result.thread_id, result.after_seq, result.epoch
        )
        if self._closing:
            await follower.aclose()
            return
        forward = TerminalForward(
            result.run_id,
            result.thread_id,
            follower,
            outbox=self._outbox,
            bridge=self._engine.bridge,
            batch_size=self._batch_size,
            fail=self.fail,
        )
        self._forwards[result.run_id] = forward
        forward.task = self._spawn(self._run_forward(forward), f"forward:{result.run_id}")

    async def _run_forward(self, forward: TerminalForward) -> None:
        try:
            await forward.run()
        finally:
            if self._forwards.get(forward.run_id) is forward:
                del self._forwards[forward.run_id]

    async def _follow(self, thread_id: str, after_seq: int, epoch: str | None) -> Subscription:
        """A new subscription, replacing any existing one for the thread atomically.

        The new follower starts before the old subscription stops, and what the
        old one queued but did not send is dropped, so the client sees the old
        stream end, then the reply, then the new stream: never both at once.
        Forwards of terminal events in the thread hand over to it (an event at
        or before its start is queued first, one after it is the
        subscription's), so none is lost or sent twice.
        """
        bridge = self._engine.bridge
        follower = await bridge.follow(thread_id, after_seq, epoch)
        try:
            head = (await bridge.info(thread_id)).last_seq
            old = self._subs.pop(thread_id, None)
            if old is not None:
                await old.stop()
            for forward in [f for f in self._forwards.values() if f.thread_id == thread_id]:
                del self._forwards[forward.run_id]
                await forward.settle(follower.start.after_seq)
        except BaseException:
            await follower.aclose()
            raise
        sub = Subscription(
            thread_id,
            follower,
            head,
            outbox=self._outbox,
            bridge=bridge,
            batch_size=self._batch_size,
            fail=self.fail,
        )
        self._subs[thread_id] = sub
        return sub

    def _start(self, sub: Subscription) -> None:
        if self._subs.get(sub.thread_id) is sub and sub.task is None:
            sub.task = self._spawn(sub.run(), f"sub:{sub.thread_id}")

    def _reply(self, frame: ServerFrame) -> None:
        if not self._outbox.put_control(encode_frame(frame)):
            self.fail(CloseCode.SLOW_CONSUMER, "slow consumer: resume from the log")

    def _error(self, exc: AgentcastError, ref: Ref | None) -> None:
        """Answer one request with an ``error`` frame whose code is a row of ``ERRORS``.

        A code outside the table, or ``internal``, is sent as ``internal`` with
        a fixed message: an unexpected failure is logged, never described. An
        error whose text came from lower layers (``client_safe`` false: paths,
        DSNs, driver messages) is sent with its row's meaning, and its text
        goes to the server log with the connection's ids.
        """
        internal = ERRORS[ErrorCode.INTERNAL]
        if exc.error_spec is internal:
            frame = ErrorFrame(code=ErrorCode.INTERNAL.value, message=_INTERNAL_MESSAGE, ref=ref)
        else:
            if not exc.client_safe:
                logger.warning(
                    "connection %s of %s: request %r answered %s: %s",
                    self.connection_id,
                    self.user_id,
                    ref,
                    exc.code,
                    exc.message,
                )
            limit = exc.limit if isinstance(exc, LimitExceeded) and exc.limit else msgspec.UNSET
            message = client_message(exc)
            frame = ErrorFrame(code=str(exc.code), message=message, ref=ref, limit=limit)
        self._reply(frame)


def _now() -> float:
    return time.monotonic()


def _peek_ref(data: str | bytes) -> Ref | None:
    """The ``id`` of a frame that will not be parsed fully (rate limited, binary)."""
    try:
        return extract_ref(msgspec.json.decode(data))
    except msgspec.DecodeError:
        return None
