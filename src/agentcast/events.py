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

Bounds (docs/events.md). Every string of a payload is bounded. Identifier-like
fields (ids, names, ``tool_name``, ``error_type``, ``message_id``) are
:data:`Name`: 1 to :data:`MAX_NAME_CHARS` (256) characters, the bound the
protocol puts on ids. Free-text fields (:data:`FreeText`: ``message``,
``reasoning``, ``delta`` (of ``text_delta`` and ``thinking_delta``),
``final_response``, ``error``, ``reason``) have no bound of their own: the
whole event is bounded by ``max_event_bytes`` (:mod:`agentcast.event_size`,
checked by ``Bridge.emit``). A value over a bound is refused with
:class:`InvalidEvent` naming the field.
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
    "MAX_NAME_CHARS",
    "PAYLOAD_TYPES",
    "REDACTED",
    "SECRET_KEY_EXAMPLES",
    "TERMINAL_TYPES",
    "AgentCancelled",
    "AgentCompleted",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "Custom",
    "Event",
    "EventType",
    "FreeText",
    "Name",
    "Progress",
    "TextDelta",
    "ThinkingDelta",
    "TokenUsage",
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
    THINKING_DELTA = "thinking_delta"
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
#: The longest identifier-like string of a payload (the protocol's ids have the same bound).
MAX_NAME_CHARS: Final = 256
#: An identifier-like string: an id, a name, a type (1 to ``MAX_NAME_CHARS`` characters).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
#: Free text, bounded only by the whole event's ``max_event_bytes`` (module docstring).
FreeText = str


class _Payload(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Base of every payload: strict, immutable, optional fields omitted."""


class AgentStarted(_Payload, frozen=True):
    """A run (or sub-run) began; ``message`` is its input."""

    message: FreeText


class AgentThinking(_Payload, frozen=True):
    """A reasoning step the user should see."""

    reasoning: FreeText
    step: Annotated[int, msgspec.Meta(ge=0)] | None = None
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class ToolExecuting(_Payload, frozen=True):
    """A tool call started; secrets in ``parameters`` are already redacted."""

    tool_call_id: Name
    tool_name: Name
    #: A JSON object; ``msgspec.Raw`` from :func:`bounded_json` is accepted so
    #: that parameters measured for size are not encoded a second time.
    parameters: Any

    def __post_init__(self) -> None:
        if not isinstance(self.parameters, dict | msgspec.Raw):
            raise ValueError("parameters must be an object")


class ToolCompleted(_Payload, frozen=True):
    """A tool call ended: ``results`` on success, ``error`` otherwise."""

    tool_call_id: Name
    tool_name: Name
    status: ToolStatus
    duration_ms: NonNegative
    results: Any | msgspec.UnsetType = msgspec.UNSET
    error: FreeText | None = None

    def __post_init__(self) -> None:
        if self.status == "success":
            if self.error is not None:
                raise ValueError("a successful tool call has no error")
        elif self.error is None or self.results is not msgspec.UNSET:
            raise ValueError("a failed tool call has an error and no results")


class TextDelta(_Payload, frozen=True):
    """A chunk of streamed text (coalesced tokens) of message ``message_id``."""

    message_id: Name
    delta: FreeText


class ThinkingDelta(_Payload, frozen=True):
    """A chunk of streamed reasoning (a model's thinking tokens, coalesced) of ``message_id``.

    The reasoning counterpart of :class:`TextDelta`: same ``message_id`` as the
    run's text, so a client shows a message's reasoning next to its answer.
    ``agent_thinking`` stays for discrete, numbered steps.
    """

    message_id: Name
    delta: FreeText


class TokenUsage(_Payload, frozen=True):
    """Tokens a run spent with its model(s), sub-runs included (``agent_completed.usage``)."""

    prompt_tokens: Annotated[int, msgspec.Meta(ge=0)]
    completion_tokens: Annotated[int, msgspec.Meta(ge=0)]
    total_tokens: Annotated[int, msgspec.Meta(ge=0)]


class Progress(_Payload, frozen=True):
    """Coarse progress, 0 to 100."""

    percentage: Annotated[float, msgspec.Meta(ge=0, le=100)]
    message: FreeText | None = None


class AgentCompleted(_Payload, frozen=True, kw_only=True, omit_defaults=False):
    """The run succeeded."""

    status: Literal["success"] = "success"
    final_response: FreeText
    duration_ms: NonNegative
    result: Any | msgspec.UnsetType = msgspec.UNSET
    #: Absent when the agent reported no usage; ``null`` when it called a model
    #: that reported none (``RunContext.report_usage``).
    usage: TokenUsage | msgspec.UnsetType | None = msgspec.UNSET


class AgentError(_Payload, frozen=True):
    """The run failed; ``message`` is sanitised (no paths, no secrets)."""

    error_type: Name
    message: FreeText
    duration_ms: NonNegative


class AgentCancelled(_Payload, frozen=True):
    """The run was cancelled."""

    reason: FreeText
    duration_ms: NonNegative


class Custom(_Payload, frozen=True):
    """An application-defined event."""

    name: Name
    value: Any


PAYLOAD_TYPES: Final[dict[EventType, type[_Payload]]] = {
    EventType.AGENT_STARTED: AgentStarted,
    EventType.AGENT_THINKING: AgentThinking,
    EventType.TOOL_EXECUTING: ToolExecuting,
    EventType.TOOL_COMPLETED: ToolCompleted,
    EventType.TEXT_DELTA: TextDelta,
    EventType.THINKING_DELTA: ThinkingDelta,
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

#: The redaction rule, by example: ``(key, is_secret)``. It is the contract of
#: :func:`is_secret_key` (tests/test_redaction.py checks every row, for keys of
#: mappings and for ``key=value`` pairs in text): a change to the rule starts
#: with a row here. ``key`` alone is no secret (``primary_key``, ``monkey``,
#: ``keyword``); ``token`` is one only as the last word (not ``max_tokens``,
#: ``token_count``, ``tokenizer``).
SECRET_KEY_EXAMPLES: Final[tuple[tuple[str, bool], ...]] = (
    ("secret_key", True), ("SECRET_KEY", True), ("secretKey", True),
    ("aws_secret_access_key", True), ("access_key", True), ("signing_key", True),
    ("passcode", True), ("private_key", True), ("client_secret", True), ("api_key", True),
    ("cookie", True), ("authorization", True), ("password", True), ("session_token", True),
    ("apiKey", True), ("API-KEY", True), ("x-api-key", True), ("privateKey", True),
    ("access_token", True), ("db_password", True), ("Set-Cookie", True), ("credentials", True),
    ("max_tokens", False), ("total_tokens", False), ("prompt_tokens", False),
    ("token_count", False), ("keyword", False), ("monkey", False), ("primary_key", False),
    ("sessions_total", False), ("tokenizer", False), ("key", False), ("sort_key", False),
    ("author", False), ("query", False),
)  # fmt: skip

#: A key whose last word is one of these is secret.
_SECRET_WORDS: Final = frozenset(
    {
        "password", "passwd", "passphrase", "passcode", "pwd", "secret", "token", "apikey",
        "authorization", "credential", "credentials", "privatekey", "cookie", "jwt", "bearer",
    }
)  # fmt: skip
#: A key ending in ``<one of these>_key`` is secret: "key" alone is not (it names a
#: record's key as often as a credential), only these kinds of key are.
_SECRET_KEY_KINDS: Final = frozenset(
    {"secret", "access", "signing", "private", "api", "auth", "encryption", "master", "session"}
)
_WORD_SPLIT = re.compile(r"[^a-zA-Z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


@lru_cache(maxsize=4096)  # the same few keys come back with every event of a run
def is_secret_key(key: str) -> bool:
    """Whether a parameter name looks like it holds a secret (:data:`SECRET_KEY_EXAMPLES`).

    Word-based, so that a secret word inside another word (``monkey``,
    ``tokenizer``) does not count: the key is split into words
    (``snake_case``, ``kebab-case``, ``camelCase``) and is secret when its last
    word is a secret word (``password``, ``client_secret``, ``session_token``,
    ``Authorization``) or its last two words are ``<kind>_key`` for a secret
    kind (``api_key``, ``private_key``, ``aws_secret_access_key`` — not
    ``primary_key``). Plurals and counts name sizes, not secrets:
    ``max_tokens`` and ``token_count`` are kept.
    """
    words = [w.lower() for w in _WORD_SPLIT.split(key) if w]
    if not words:
        return False
    if words[-1] in _SECRET_WORDS:
        return True
    return len(words) >= 2 and words[-1] == "key" and words[-2] in _SECRET_KEY_KINDS


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
