"""The WebSocket wire protocol, sans I/O: frames in, commands out; replies in, frames out.

Like the core of ``websockets`` or ``h11``, nothing here touches a socket.
:func:`parse_client_frame` turns the text of a client frame into one of the
:class:`Command` structs (or raises :class:`ProtocolError` carrying the exact
wire error code), and the server-frame structs encode to the bytes the gateway
sends. The Python client uses the same module the other way round
(:func:`encode_command`, :func:`parse_server_frame`), so both ends agree by
construction. ``tests/test_protocol.py`` exercises all of it with dicts alone.

Client → server (each may carry ``id``, echoed as ``ref``)::

    start_agent   agent, message, thread_id?, on_active?, idempotency_key?
    user_message  message, thread_id?, on_active?
    subscribe     thread_id, after_seq? (int >= 0, default 0), epoch?
    unsubscribe   thread_id
    cancel        run_id | thread_id          (alias: stop_agent)
    ping

Server → client: ``connection_established``, ``run_accepted``, ``subscribed``,
``unsubscribed``, ``cancel_accepted``, ``pong``, ``error`` — plus the events
themselves, sent as the log stored them (one object, or with ``?batch=1`` a
JSON array of them).

Error codes and close codes come from :mod:`agentcast.errors`, the one table
docs/protocol.md is written from; they are re-exported here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from .errors import (
    CLOSE_CODE_EXPLANATIONS,
    ERROR_CODE_EXPLANATIONS,
    NO_RECONNECT_CLOSE_CODES,
    AgentcastError,
    CloseCode,
    ErrorCode,
)
from .events import Event

__all__ = [
    "CLIENT_FRAME_TYPES",
    "CLOSE_CODE_EXPLANATIONS",
    "ERROR_CODE_EXPLANATIONS",
    "NO_RECONNECT_CLOSE_CODES",
    "SERVER_FRAME_TYPES",
    "SUBPROTOCOL",
    "Cancel",
    "CancelAccepted",
    "CloseCode",
    "Command",
    "ConnectionEstablished",
    "ErrorCode",
    "ErrorFrame",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ref",
    "RunAccepted",
    "ServerFrame",
    "StartAgent",
    "Subscribe",
    "Subscribed",
    "TokenBucket",
    "Unsubscribe",
    "Unsubscribed",
    "UserMessage",
    "encode_command",
    "encode_frame",
    "extract_ref",
    "frame_too_large",
    "pack_events",
    "parse_client_frame",
    "parse_server_frame",
]

#: The subprotocol the server selects when a client offers it.
SUBPROTOCOL: Final = "agentcast.v1"

#: A request id: whatever the client chose, echoed back unchanged (never coerced).
Ref = str | int

_MAX_SEQ: Final = 2**63 - 1
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Seq = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SEQ)]
OnActive = Literal["reject", "enqueue", "interrupt"]


# --- client → server ------------------------------------------------------------


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A parsed client frame. ``id`` is echoed as ``ref`` in the reply."""

    #: The frame's ``type`` on the wire.
    TYPE: ClassVar[str] = ""

    id: Ref | None = None


class StartAgent(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Start ``agent`` on ``message`` in a new thread, or in ``thread_id``."""

    TYPE: ClassVar[str] = "start_agent"

    agent: _Id
    message: str
    thread_id: _Id | None = None
    on_active: OnActive = "reject"
    idempotency_key: _Id | None = None


class UserMessage(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Send a message to the thread's last agent (or the default agent)."""

    TYPE: ClassVar[str] = "user_message"

    message: str
    thread_id: _Id | None = None
    on_active: OnActive = "reject"


class Subscribe(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Follow a thread from ``(epoch, after_seq)``; replaces an existing subscription."""

    TYPE: ClassVar[str] = "subscribe"

    thread_id: _Id
    after_seq: _Seq = 0
    epoch: _Id | None = None


class Unsubscribe(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Stop following a thread."""

    TYPE: ClassVar[str] = "unsubscribe"

    thread_id: _Id


class Cancel(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cancel a run by id, or the active run of a thread (exactly one of the two)."""

    TYPE: ClassVar[str] = "cancel"

    run_id: _Id | None = None
    thread_id: _Id | None = None

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError: invalid_message.
        if (self.run_id is None) == (self.thread_id is None):
            raise ValueError("cancel needs exactly one of `run_id` or `thread_id`")


class Ping(Command, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An application-level heartbeat; answered with ``pong``."""

    TYPE: ClassVar[str] = "ping"


#: Every client frame type, aliases included, and the command it parses to.
CLIENT_FRAME_TYPES: Final[dict[str, type[Command]]] = {
    "start_agent": StartAgent,
    "user_message": UserMessage,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "cancel": Cancel,
    "stop_agent": Cancel,
    "ping": Ping,
}


class ProtocolError(AgentcastError):
    """A client frame the server cannot act on; becomes an ``error`` frame.

    Args:
        code: ``bad_json``, ``invalid_message`` or ``unknown_type``.
        message: Why, safe to show to the client (never a traceback).
        ref: The frame's ``id`` when one could be read, so the client can
            correlate the error with its request.
    """

    def __init__(self, code: ErrorCode, message: str, ref: Ref | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref


def extract_ref(obj: Any) -> Ref | None:
    """The ``id`` of a decoded frame when it is a string or an integer, else ``None``.

    Read before validating the rest of the frame, so that even a malformed
    request gets an error the client can match to it.
    """
    if isinstance(obj, dict):
        ref = obj.get("id")
        if isinstance(ref, str | int) and not isinstance(ref, bool):
            return ref
    return None


def parse_client_frame(data: str | bytes) -> Command:
    """Parse the payload of one client text frame into its command.

    Raises:
        ProtocolError: ``bad_json`` (not JSON), ``invalid_message`` (not an
            object, ``type`` missing or not a string, a field missing, of the
            wrong type, out of range or unknown) or ``unknown_type``.
    """
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a frame must be a JSON object")
    ref = extract_ref(obj)
    frame_type = obj.pop("type", None)
    if frame_type is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "missing field `type`", ref)
    if not isinstance(frame_type, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "field `type` must be a string", ref)
    command_type = CLIENT_FRAME_TYPES.get(frame_type)
    if command_type is None:
        shown = frame_type[:64]
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {shown!r}", ref)
    try:
        return msgspec.convert(obj, command_type)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), ref) from None


def encode_command(command: Command) -> str:
    """The text of the client frame for ``command`` (unset optional fields omitted)."""
    body = {"type": command.TYPE}
    body.update({k: v for k, v in msgspec.structs.asdict(command).items() if v is not None})
    return msgspec.json.encode(body).decode()


# --- server → client ------------------------------------------------------------


class _Frame(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """A server control frame; its ``type`` is the struct's tag."""


class ConnectionEstablished(_Frame, frozen=True, kw_only=True, tag="connection_established"):
    """The first frame of every connection."""

    connection_id: str
    user_id: str
    server_version: str


class RunAccepted(_Frame, frozen=True, kw_only=True, tag="run_accepted"):
    """A run was accepted; its events follow ``(epoch, after_seq)`` in ``thread_id``."""

    run_id: str
    thread_id: str
    epoch: str
    after_seq: int
    ref: Ref | None = None


class Subscribed(_Frame, frozen=True, kw_only=True, tag="subscribed"):
    """Delivery of ``thread_id`` starts after ``after_seq``.

    ``recovered`` is false when the requested position could not be honoured
    (another epoch, trimmed, beyond the head): delivery restarts from the first
    retained event, never with a silent gap. The server also sends this frame
    without ``ref`` when it had to restart a subscription by itself.
    """

    thread_id: str
    epoch: str
    after_seq: int
    recovered: bool
    ref: Ref | None = None


class Unsubscribed(_Frame, frozen=True, kw_only=True, tag="unsubscribed"):
    """No event of ``thread_id`` follows this frame."""

    thread_id: str
    ref: Ref | None = None


class CancelAccepted(_Frame, frozen=True, kw_only=True, tag="cancel_accepted"):
    """The cancel reached the runner; ``status`` is the run's status at that moment."""

    run_id: str
    status: str
    ref: Ref | None = None


class Pong(_Frame, frozen=True, kw_only=True, tag="pong"):
    """The reply to ``ping``."""

    ref: Ref | None = None


class ErrorFrame(_Frame, frozen=True, kw_only=True, omit_defaults=False, tag="error"):
    """A request failed; ``ref`` is its ``id`` (``null`` when it had none).

    ``limit`` (only with ``limit_exceeded``) names the setting whose bound was
    reached; absent otherwise.
    """

    code: str
    message: str
    ref: Ref | None = None
    limit: str | msgspec.UnsetType = msgspec.UNSET


ServerFrame = (
    ConnectionEstablished | RunAccepted | Subscribed | Unsubscribed | CancelAccepted | Pong
    | ErrorFrame
)  # fmt: skip

#: Every server control frame type and its struct.
SERVER_FRAME_TYPES: Final[dict[str, type[_Frame]]] = {
    "connection_established": ConnectionEstablished,
    "run_accepted": RunAccepted,
    "subscribed": Subscribed,
    "unsubscribed": Unsubscribed,
    "cancel_accepted": CancelAccepted,
    "pong": Pong,
    "error": ErrorFrame,
}

_frame_encoder = msgspec.json.Encoder()


def encode_frame(frame: ServerFrame) -> bytes:
    """The JSON bytes of a control frame (sent as a text frame)."""
    return _frame_encoder.encode(frame)


def pack_events(raws: list[bytes]) -> bytes:
    """A batch frame: stored envelopes spliced into one JSON array, never re-encoded."""
    return b"[" + b",".join(raws) + b"]"


def parse_server_frame(data: str | bytes) -> ServerFrame | Event | list[Event]:
    """Decode one server frame: a control frame, an event, or a batch of events.

    Control frames tolerate fields added by a later server; events are decoded
    strictly (:func:`agentcast.events.decode_event`).

    Raises:
        msgspec.DecodeError: the frame is not valid JSON.
        msgspec.ValidationError: the frame is not a valid frame.
    """
    obj = msgspec.json.decode(data)
    if isinstance(obj, list):
        return [msgspec.convert(item, Event) for item in obj]
    if not isinstance(obj, dict):
        raise msgspec.ValidationError("a server frame must be an object or an array")
    frame_type = SERVER_FRAME_TYPES.get(obj.get("type", ""))
    if frame_type is not None:
        frame: ServerFrame = msgspec.convert(obj, frame_type)  # type: ignore[assignment]
        return frame
    return msgspec.convert(obj, Event)


# --- inbound limits -------------------------------------------------------------


def frame_too_large(data: str | bytes, limit: int) -> bool:
    """Whether a frame's payload is over ``limit`` bytes (UTF-8 for text).

    A character is 1 to 4 bytes, so most text frames are decided from their
    length alone, without encoding them.
    """
    if isinstance(data, bytes):
        return len(data) > limit
    n = len(data)
    if n > limit:
        return True
    if n * 4 <= limit:
        return False
    return len(data.encode("utf-8", "surrogatepass")) > limit


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    Time is passed in (``now``, seconds on any monotonic clock), so the bucket
    is deterministic to test and free of I/O.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; return whether it was allowed."""
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
