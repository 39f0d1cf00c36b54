"""The event contract: the envelope, every event type and its payload.

Every server→client event is one versioned JSON object (docs/architecture.md invariant
1)::

    {"v":1,"type":…,"event_id":…,"thread_id":…,"run_id":…,"parent_run_id":…,
     "seq":…,"ts":…,"agent":…,"data":{…}}

Payloads are validated on emit by converting the caller's mapping into the
payload's ``msgspec.Struct`` (unknown fields, wrong types and out-of-range
values are rejected), then encoded to JSON exactly once. The log later splices
those bytes into the envelope once ``seq`` is known, and every subscriber is
sent the same bytes: an event is never re-encoded per connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import InvalidEvent

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "EVENT_VERSION",
    "PAYLOAD_TYPES",
    "REDACTED",
    "TERMINAL_TYPES",
    "AgentCancelled",
    "AgentCompleted",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "Custom",
    "Event",
    "EventType",
    "Progress",
    "TextDelta",
    "ToolCompleted",
    "ToolExecuting",
    "ToolStatus",
    "bounded_json",
    "decode_event",
    "decode_events",
    "encode_envelope",
    "encode_payload",
    "is_secret_key",
    "redact",
]

EVENT_VERSION: Final = 1
DEFAULT_MAX_VALUE_BYTES: Final = 256 * 1024
REDACTED: Final = "[REDACTED]"


class EventType(StrEnum):
    """Every event type of the wire contract."""

    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    TEXT_DELTA = "text_delta"
    PROGRESS = "progress"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    AGENT_CANCELLED = "agent_cancelled"
    CUSTOM = "custom"


#: The three events that end a run; each run has exactly one (invariant 3).
TERMINAL_TYPES: Final = frozenset(
    {EventType.AGENT_COMPLETED, EventType.AGENT_ERROR, EventType.AGENT_CANCELLED}
)

ToolStatus = Literal["success", "error", "timeout", "cancelled"]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Payload(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Base of every payload: strict, immutable, optional fields omitted."""


class AgentStarted(_Payload, frozen=True):
    """A run (or sub-run) began; ``message`` is its input."""

    message: str


class AgentThinking(_Payload, frozen=True):
    """A reasoning step the user should see."""

    reasoning: str
    step: Annotated[int, msgspec.Meta(ge=0)] | None = None
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class ToolExecuting(_Payload, frozen=True):
    """A tool call started; secrets in ``parameters`` are already redacted."""

    tool_call_id: NonEmpty
    tool_name: NonEmpty
    #: A JSON object; ``msgspec.Raw`` from :func:`bounded_json` is accepted so
    #: that parameters measured for size are not encoded a second time.
    parameters: Any

    def __post_init__(self) -> None:
        if not isinstance(self.parameters, dict | msgspec.Raw):
            raise ValueError("parameters must be an object")


class ToolCompleted(_Payload, frozen=True):
    """A tool call ended: ``results`` on success, ``error`` otherwise."""

    tool_call_id: NonEmpty
    tool_name: NonEmpty
    status: ToolStatus
    duration_ms: NonNegative
    results: Any | msgspec.UnsetType = msgspec.UNSET
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status == "success":
            if self.error is not None:
                raise ValueError("a successful tool call has no error")
        elif self.error is None or self.results is not msgspec.UNSET:
            raise ValueError("a failed tool call has an error and no results")


class TextDelta(_Payload, frozen=True):
    """A chunk of streamed text (coalesced tokens) of message ``message_id``."""

    message_id: NonEmpty
    delta: str


class Progress(_Payload, frozen=True):
    """Coarse progress, 0 to 100."""

    percentage: Annotated[float, msgspec.Meta(ge=0, le=100)]
    message: str | None = None


class AgentCompleted(_Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The run succeeded."""

    status: Literal["success"] = "success"
    final_response: str
    duration_ms: NonNegative
    result: Any | msgspec.UnsetType = msgspec.UNSET


class AgentError(_Payload, frozen=True):
    """The run failed; ``message`` is sanitised (no paths, no secrets)."""

    error_type: NonEmpty
    message: str
    duration_ms: NonNegative


class AgentCancelled(_Payload, frozen=True):
    """The run was cancelled."""

    reason: str
    duration_ms: NonNegative


class Custom(_Payload, frozen=True):
    """An application-defined event."""

    name: NonEmpty
    value: Any


PAYLOAD_TYPES: Final[dict[EventType, type[_Payload]]] = {
    EventType.AGENT_STARTED: AgentStarted,
    EventType.AGENT_THINKING: AgentThinking,
    EventType.TOOL_EXECUTING: ToolExecuting,
    EventType.TOOL_COMPLETED: ToolCompleted,
    EventType.TEXT_DELTA: TextDelta,
    EventType.PROGRESS: Progress,
    EventType.AGENT_COMPLETED: AgentCompleted,
    EventType.AGENT_ERROR: AgentError,
    EventType.AGENT_CANCELLED: AgentCancelled,
    EventType.CUSTOM: Custom,
}

_encoder = msgspec.json.Encoder()


def encode_payload(event_type: str, data: Mapping[str, Any]) -> bytes:
    """Validate ``data`` against ``event_type``'s payload and encode it once.

    Raises:
        InvalidEvent: unknown type, missing/unknown/mistyped field, a value out
            of range, or a value JSON cannot represent.
    """
    try:
        cls = PAYLOAD_TYPES[EventType(event_type)]
    except ValueError:
        raise InvalidEvent(f"unknown event type {event_type!r}") from None
    try:
        payload = msgspec.convert(data, cls, strict=True)
        return _encoder.encode(payload)
    except (msgspec.ValidationError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(f"invalid {event_type} event: {exc}") from None


class _WireEnvelope(msgspec.Struct, array_like=False):
    v: int
    type: str
    event_id: str
    thread_id: str
    run_id: str
    parent_run_id: str | None
    seq: int
    ts: float
    agent: str | None
    data: msgspec.Raw


def encode_envelope(
    *,
    event_type: str,
    event_id: str,
    thread_id: str,
    run_id: str,
    parent_run_id: str | None,
    seq: int,
    ts: float,
    agent: str | None,
    data: bytes,
) -> bytes:
    """Splice an already-encoded payload into the envelope (done once per event)."""
    return _encoder.encode(
        _WireEnvelope(
            EVENT_VERSION,
            event_type,
            event_id,
            thread_id,
            run_id,
            parent_run_id,
            seq,
            ts,
            agent,
            msgspec.Raw(data),
        )
    )


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A decoded event, as a client sees it.

    ``data`` stays a dict so that a client built against this version can
    still read payloads of a later minor version; :meth:`payload` gives the
    typed view.
    """

    v: int
    type: str
    event_id: str
    thread_id: str
    run_id: str
    parent_run_id: str | None
    seq: int
    ts: float
    agent: str | None
    data: dict[str, Any]

    def payload(self) -> Any:
        """The typed payload (one of the payload structs of this module)."""
        return msgspec.convert(self.data, PAYLOAD_TYPES[EventType(self.type)])

    @property
    def is_terminal(self) -> bool:
        """Whether this event ends its run."""
        return self.type in TERMINAL_TYPES


_event_decoder = msgspec.json.Decoder(Event)
_events_decoder = msgspec.json.Decoder(list[Event])


def decode_event(raw: bytes | str) -> Event:
    """Decode one envelope strictly (unknown envelope fields are rejected)."""
    return _event_decoder.decode(raw)


def decode_events(raw: bytes | str) -> list[Event]:
    """Decode a batch frame (a JSON array of envelopes)."""
    return _events_decoder.decode(raw)


# --- redaction and size limits -------------------------------------------------

_SECRET_WORDS: Final = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "token",
        "apikey",
        "authorization",
        "credential",
        "credentials",
        "privatekey",
        "cookie",
        "jwt",
        "bearer",
    }
)
_WORD_SPLIT = re.compile(r"[^a-zA-Z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


@lru_cache(maxsize=4096)  # the same few keys come back with every event of a run
def is_secret_key(key: str) -> bool:
    """Whether a parameter name looks like it holds a secret.

    The key is split into words (``snake_case``, ``kebab-case``, ``camelCase``);
    it is secret when its last word, or its last two words joined, is a secret
    word: ``password``, ``client_secret``, ``access_token``, ``api_key``,
    ``privateKey``, ``Authorization`` — but not ``max_tokens`` or
    ``token_count``, which name sizes, not secrets.
    """
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    if not words:
        return False
    if words[-1] in _SECRET_WORDS:
        return True
    return len(words) >= 2 and (words[-2] + words[-1]) in _SECRET_WORDS


def redact(value: Any) -> Any:
    """Return ``value`` with every secret-looking key's value replaced.

    Walks nested mappings and sequences; the input is not modified.
    """
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def bounded_json(value: Any, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> msgspec.Raw:
    """Encode ``value`` once; above ``max_bytes`` return a truncation marker.

    The marker is ``{"truncated": true, "original_bytes": N, "preview": "…"}``
    where ``preview`` is the start of the JSON text (at most half the limit).
    The result is ``msgspec.Raw``, so the payload that embeds it is not
    encoded twice.

    Raises:
        InvalidEvent: ``value`` cannot be represented as JSON.
    """
    try:
        raw = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(f"value is not JSON-serialisable: {exc}") from None
    if len(raw) <= max_bytes:
        return msgspec.Raw(raw)
    preview = raw[: max(0, max_bytes // 2)].decode("utf-8", errors="ignore")
    return msgspec.Raw(
        _encoder.encode({"truncated": True, "original_bytes": len(raw), "preview": preview})
    )
