"""Decoding the server's frames, tolerant of what a later server adds.

Pure (no I/O, no connection state), so the client's rules for reading a frame
(docs/client.md, "Frames from a later server, and ``bad_frame``") stand on
their own beside the connection logic of :mod:`agentcast.client`, which
re-exports the public names. A well-formed frame takes the strict fast path of
:mod:`agentcast.protocol`; only a frame that fails it is read field by field,
so unknown envelope fields are ignored and an event of an unknown type becomes
a :class:`GenericEvent` in its place. A frame that cannot be read at all raises
:class:`ClientError` ``bad_frame``: it might have held an event, and nothing is
skipped silently.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .errors import ClientError
from .events import Event, EventType
from .protocol import SERVER_FRAME_TYPES, ServerFrame, parse_server_frame

__all__ = ["GenericEvent", "decode_server_frame"]


class GenericEvent(Event, frozen=True):
    """An event this client cannot type, delivered rather than dropped.

    A later server may add event types, and an envelope may not decode as
    :class:`~agentcast.events.Event` (a field missing or of another type).
    Either way the event still has its place in the thread: it is handed to
    the caller, in seq order, and moves the resume position, so nothing is
    skipped silently. Envelope fields it lacks are empty (``""``, ``0``,
    ``None``); :attr:`envelope` holds the event exactly as it was received.
    """

    envelope: dict[str, Any] = msgspec.field(default_factory=dict)

    def payload(self) -> Any:
        """The raw ``data``: there is no typed payload for this event."""
        return self.data


_KNOWN_TYPES: Final = frozenset(t.value for t in EventType)
_EVENT_FIELDS: Final = frozenset(Event.__struct_fields__)


def _bad_frame(why: str) -> ClientError:
    return ClientError("bad_frame", f"the server sent a frame that cannot be read: {why}")


def decode_server_frame(data: str | bytes) -> ServerFrame | list[Event]:
    """Decode one server frame into a control frame or the events it carries.

    Well-formed frames take the strict fast path
    (:func:`agentcast.protocol.parse_server_frame`); only a frame that fails it
    is looked at field by field, so that additions are tolerated: unknown
    envelope fields are ignored, and an event of an unknown type (or one whose
    envelope does not decode) becomes a :class:`GenericEvent`.

    Raises:
        ClientError: ``bad_frame``: not JSON, neither an object nor an array, a
            control frame that does not decode, or an event without an
            integer ``seq``, a string ``thread_id`` and a string ``type``.
    """
    try:
        frame = parse_server_frame(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _decode_leniently(data)
    if isinstance(frame, Event):
        return [_typed(frame)]
    if isinstance(frame, list):
        return [_typed(event) for event in frame]
    return frame


def _typed(event: Event) -> Event:
    if event.type in _KNOWN_TYPES:
        return event
    envelope = msgspec.structs.asdict(event)
    return GenericEvent(**envelope, envelope=envelope)


def _decode_leniently(data: str | bytes) -> ServerFrame | list[Event]:
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise _bad_frame(f"not JSON ({exc})") from None
    if isinstance(obj, list):
        return [_lenient_event(item) for item in obj]
    if not isinstance(obj, dict):
        raise _bad_frame("neither an object nor an array")
    kind = obj.get("type")
    frame_type = SERVER_FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if frame_type is not None and "seq" not in obj and "v" not in obj:
        try:
            frame: ServerFrame = msgspec.convert(obj, frame_type)  # type: ignore[assignment]
        except msgspec.ValidationError as exc:
            raise _bad_frame(f"{obj['type']}: {exc}") from None
        return frame
    return [_lenient_event(obj)]


def _lenient_event(obj: Any) -> Event:
    """An event from a decoded object: typed if possible, else generic; never dropped."""
    if not isinstance(obj, dict):
        raise _bad_frame("an event that is not an object")
    seq, thread_id, kind = obj.get("seq"), obj.get("thread_id"), obj.get("type")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise _bad_frame("an event without an integer seq")
    if not isinstance(thread_id, str) or not isinstance(kind, str):
        raise _bad_frame(f"event {seq} without a thread_id or a type")
    if kind in _KNOWN_TYPES:
        known = {k: v for k, v in obj.items() if k in _EVENT_FIELDS}
        try:
            event: Event = msgspec.convert(known, Event)
        except msgspec.ValidationError:
            pass  # the envelope is not one this version can type: deliver it as is
        else:
            return event
    run_id, parent, agent, ts, event_id, data = (
        obj.get(k) for k in ("run_id", "parent_run_id", "agent", "ts", "event_id", "data")
    )
    version = obj.get("v")
    return GenericEvent(
        v=version if isinstance(version, int) else 0,
        type=kind,
        event_id=event_id if isinstance(event_id, str) else "",
        thread_id=thread_id,
        run_id=run_id if isinstance(run_id, str) else "",
        parent_run_id=parent if isinstance(parent, str) else None,
        seq=seq,
        ts=float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0,
        agent=agent if isinstance(agent, str) else None,
        data=data if isinstance(data, dict) else {},
        envelope=obj,
    )
